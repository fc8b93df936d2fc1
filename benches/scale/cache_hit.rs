//! Cache hit.

use super::*;

/// Runs `iters` hits on `threads` threads of `runtime`; the wall time.
pub(crate) fn hits<C: Contender>(
    runtime: &Runtime,
    contender: &Arc<C>,
    iters: u64,
    threads: usize,
) -> Duration {
    runtime.block_on(async {
        if threads == 1 {
            let started = Instant::now();
            for _ in 0..iters {
                contender.hit().await;
            }
            return started.elapsed();
        }
        let per_thread = iters.div_ceil(threads as u64);
        let started = Instant::now();
        let tasks: Vec<_> = (0..threads)
            .map(|_| {
                let contender = contender.clone();
                tokio::spawn(async move {
                    for _ in 0..per_thread {
                        contender.hit().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        started.elapsed()
    })
}

pub(crate) fn cache_hit(criterion: &mut Criterion, fixture: &Fixture, summary: &mut Summary) {
    let client_runtime = multi_thread();
    let (manager, grant) =
        client_runtime.block_on(fixture.connect(seed::ACME_DK, Arc::new(SystemClock)));
    let floor_token = || FloorToken {
        access_token: grant.access_token.as_ref().unwrap().expose_secret().into(),
        expires_at: Instant::now() + ACCESS_TTL,
    };
    let floor = Arc::new(ArcSwapFloor(ArcSwap::from_pointee(floor_token())));
    let floor_clock = Arc::new(ArcSwapWithClock(ArcSwap::from_pointee(floor_token())));
    let ours = Arc::new(Ours {
        manager,
        subject: subject(seed::ACME_DK),
    });
    let mutex = Arc::new(MutexCache::new(&grant, fixture.token_url()));
    let (_, yup_grant) =
        client_runtime.block_on(fixture.connect(seed::GLOBEX, Arc::new(SystemClock)));
    let yup = Arc::new(client_runtime.block_on(Yup::new(fixture, &yup_grant, ACCESS_TTL)));
    let refreshes_before = fixture.sandbox.stats().token_requests_for("refresh_token");

    let cores = all_cores();
    for (group, threads) in [("cache_hit_one_core", 1), ("cache_hit_all_cores", cores)] {
        let runtime = if threads == 1 {
            current_thread()
        } else {
            multi_thread()
        };
        let mut g = criterion.benchmark_group(group);
        g.bench_function("arcswap_floor", |b| {
            b.iter_custom(|iters| hits(&runtime, &floor, iters, threads))
        });
        g.bench_function("arcswap_with_clock", |b| {
            b.iter_custom(|iters| hits(&runtime, &floor_clock, iters, threads))
        });
        g.bench_function("pleo_auth", |b| {
            b.iter_custom(|iters| hits(&runtime, &ours, iters, threads))
        });
        g.bench_function("mutex_cache", |b| {
            b.iter_custom(|iters| hits(&runtime, &mutex, iters, threads))
        });
        g.bench_function("yup_oauth2", |b| {
            b.iter_custom(|iters| hits(&runtime, &yup, iters, threads))
        });
        g.finish();
        let label = if threads == 1 {
            "one core".to_owned()
        } else {
            format!("all {threads} cores")
        };
        summary.ratio(
            format!("cache hit, {label}: pleo-auth vs ArcSwap load (floor)"),
            group,
            "pleo_auth",
            "arcswap_floor",
            // Issue 18's goals.
            Some(if threads == 1 { 1.3 } else { 1.1 }),
        );
        summary.ratio(
            format!("cache hit, {label}: pleo-auth vs ArcSwap load + Instant::now()"),
            group,
            "pleo_auth",
            "arcswap_with_clock",
            None,
        );
        summary.ratio(
            format!("cache hit, {label}: pleo-auth vs Mutex<Option<Token>> cache"),
            group,
            "pleo_auth",
            "mutex_cache",
            None,
        );
        summary.ratio(
            format!("cache hit, {label}: pleo-auth vs yup-oauth2"),
            group,
            "pleo_auth",
            "yup_oauth2",
            None,
        );
    }
    let refreshes = fixture.sandbox.stats().token_requests_for("refresh_token") - refreshes_before;
    summary.note(format!(
        "cache hit: {refreshes} refreshes happened during the cache-hit benchmarks (0 expected)"
    ));
}
