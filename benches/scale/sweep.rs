//! Keep-alive sweep.

use pleo_auth_core::testing::{FaultyStore, StoreCalls};

use super::*;

/// A store behind the store double, which counts the calls that reach it and offers the
/// backend's native lease (so the counts are of grant reads alone).
pub(crate) type Counted = FaultyStore<pleo_auth_core::DynSecretStore>;

fn counted(store: pleo_auth_core::DynSecretStore) -> Arc<Counted> {
    Arc::new(FaultyStore::new(store).with_native_lease())
}

/// `keep_alive` over `grants` fresh grants on `store`, against the per-grant reads of before
/// batch reads; three rounds each, medians.
pub(crate) async fn sweep_backend(
    fixture: &Fixture,
    summary: &mut Summary,
    backend: &str,
    store: Arc<Counted>,
    grants: usize,
) {
    let (_, template) = fixture.connect(seed::ACME_DK, Arc::new(SystemClock)).await;
    let mut keys = Vec::with_capacity(grants);
    let writes = futures::stream::iter(0..grants).map(|i| {
        let mut record = template.clone();
        record.subject = subject(format!("5eed0000-0000-4000-8000-{i:012}").parse().unwrap());
        let key = pleo_auth_core::layout::oauth_grant(&record.credential_key());
        let store = store.clone();
        async move {
            store
                .put_record(&key, &record, Precondition::None)
                .await
                .unwrap();
            key
        }
    });
    use futures::StreamExt as _;
    let mut writes = writes.buffer_unordered(16);
    while let Some(key) = writes.next().await {
        keys.push(key);
    }
    let config = fixture.oauth_config();
    let dyn_store: pleo_auth_core::DynSecretStore = store.clone();
    let manager = OAuthClient::builder(config, dyn_store)
        .build()
        .unwrap()
        .token_manager();
    let prefix = pleo_auth_core::layout::oauth_grants(&template.environment, &template.client_id);
    store.take_calls();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let (mut before_calls, mut after_calls) = (StoreCalls::default(), StoreCalls::default());
    for _ in 0..3 {
        let started = Instant::now();
        let listed = store.list(&prefix).await.unwrap();
        let mut read = 0;
        for key in &listed {
            if store.get_record::<OAuthGrant>(key).await.unwrap().is_some() {
                read += 1;
            }
        }
        before.push(started.elapsed());
        assert_eq!(read, grants);
        before_calls = store.take_calls();

        let started = Instant::now();
        let report = manager.keep_alive().await.unwrap();
        after.push(started.elapsed());
        assert_eq!(report.checked, grants);
        assert!(report.refreshed.is_empty() && report.failed.is_empty());
        after_calls = store.take_calls();
    }
    let (before, after) = (median(&mut before), median(&mut after));
    let calls = |calls: StoreCalls| {
        format!(
            "{} (list {}, get {}, get_many {})",
            calls.round_trips(),
            calls.list + calls.list_page,
            calls.get,
            calls.get_many
        )
    };
    summary.note(format!(
        "{backend}: keep-alive sweep over {grants} grants: store calls {} before batching, {} \
         after; wall time {:.1} ms before, {:.1} ms after ({:.1}x faster)",
        calls(before_calls),
        calls(after_calls),
        ms(before),
        ms(after),
        before.as_secs_f64() / after.as_secs_f64(),
    ));
    summary.measured(
        format!("{backend}: keep-alive sweep of {grants} grants, batched vs one get per grant"),
        after,
        before,
        None,
    );
}

pub(crate) fn sweep(fixture: &Fixture, summary: &mut Summary) {
    let runtime = multi_thread();
    let run = random_urlsafe(6).replace(['-', '_'], "x").to_lowercase();
    runtime.block_on(async {
        let (postgres, _) = postgres_pair(&format!("sweep_{run}")).await;
        let postgres: pleo_auth_core::DynSecretStore = Arc::new(postgres);
        sweep_backend(fixture, summary, "postgres", counted(postgres), 10_000).await;
        let redis: pleo_auth_core::DynSecretStore = Arc::new(
            RedisStore::builder(service_env("PLEO_AUTH_TEST_REDIS_URL"))
                .key_prefix(format!("pleo-sweep:{run}:"))
                .connect()
                .await
                .unwrap(),
        );
        sweep_backend(fixture, summary, "redis", counted(redis), 10_000).await;
        let aws = aws_store(&format!("pleo-sweep/{run}/")).await;
        let sdk = aws.client().clone();
        let moto: pleo_auth_core::DynSecretStore = Arc::new(aws);
        sweep_backend(fixture, summary, "moto", counted(moto), 1_000).await;
        // moto finds a secret by scanning them all: leave none behind.
        let mut pages = sdk
            .list_secrets()
            .filters(
                aws_sdk_secretsmanager::types::Filter::builder()
                    .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                    .values(format!("pleo-sweep/{run}/"))
                    .build(),
            )
            .into_paginator()
            .send();
        let mut names = Vec::new();
        while let Some(page) = pages.next().await {
            names.extend(
                page.unwrap()
                    .secret_list()
                    .iter()
                    .filter_map(|s| s.name().map(str::to_owned)),
            );
        }
        for name in names {
            sdk.delete_secret()
                .secret_id(name)
                .force_delete_without_recovery(true)
                .send()
                .await
                .unwrap();
        }
    });
}

/// Calls per command since the server started (`INFO commandstats`).
pub(crate) async fn command_calls(
    conn: &mut redis::aio::ConnectionManager,
) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// `get` and compare-and-swap `put` of `store` against the raw client's `raw_get` and
/// `raw_put`, in one criterion group.
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_group<S, G, GF, P, PF>(
    criterion: &mut Criterion,
    summary: &mut Summary,
    runtime: &Runtime,
    group: &'static str,
    store: &S,
    key: &StoreKey,
    mut raw_get: G,
    mut raw_put: P,
    raw_get_name: &str,
    raw_put_name: &str,
    goal: f64,
) where
    S: SecretStore,
    G: FnMut(u64) -> GF,
    GF: Future<Output = ()>,
    P: FnMut(u64) -> PF,
    PF: Future<Output = ()>,
{
    let version = std::cell::RefCell::new(
        runtime
            .block_on(store.put(key, record_value(), Precondition::None))
            .unwrap(),
    );
    let mut g = criterion.benchmark_group(group);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("raw_get", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    raw_get(i).await;
                }
                started.elapsed()
            })
        })
    });
    g.bench_function("ours_get", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(store.get(key).await.unwrap());
                }
                started.elapsed()
            })
        })
    });
    g.bench_function("raw_put", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    raw_put(i).await;
                }
                started.elapsed()
            })
        })
    });
    g.bench_function("ours_cas_put", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let expected: Version = version.borrow().clone();
                    let next = store
                        .put(key, record_value(), Precondition::Version(expected))
                        .await
                        .unwrap();
                    *version.borrow_mut() = next;
                }
                started.elapsed()
            })
        })
    });
    g.finish();
    let backend = group.trim_start_matches("store_");
    summary.ratio(
        format!("{backend}: our get vs {raw_get_name}"),
        group,
        "ours_get",
        "raw_get",
        Some(goal),
    );
    summary.ratio(
        format!("{backend}: our compare-and-swap put vs {raw_put_name}"),
        group,
        "ours_cas_put",
        "raw_put",
        Some(goal),
    );
}
