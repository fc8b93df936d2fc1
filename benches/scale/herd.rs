//! Herd at expiry.

use super::*;

pub(crate) struct HerdResult {
    pub(crate) waits: Vec<Duration>,
    pub(crate) failures: usize,
    pub(crate) refresh_requests: u64,
    pub(crate) refreshes: u64,
    pub(crate) reuses: u64,
    pub(crate) revocations: u64,
    pub(crate) token_works: bool,
}

/// Starts `HERD` callers of `call` at once (after `arm` made the token due); their waits.
pub(crate) async fn stampede<F, Fut>(call: F) -> (Vec<Duration>, usize)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    let call = Arc::new(call);
    let barrier = Arc::new(tokio::sync::Barrier::new(HERD + 1));
    let tasks: Vec<_> = (0..HERD)
        .map(|_| {
            let call = call.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let asked = Instant::now();
                let result = call().await;
                (asked.elapsed(), result.is_ok())
            })
        })
        .collect();
    barrier.wait().await;
    let mut waits = Vec::with_capacity(HERD);
    let mut failures = 0;
    for task in tasks {
        let (wait, ok) = task.await.unwrap();
        waits.push(wait);
        failures += usize::from(!ok);
    }
    (waits, failures)
}

/// One herd round: [`stampede`] on `call`, the sandbox's counters over it, and whether the token
/// one more `call` hands out afterwards works.
pub(crate) async fn herd_round<F, Fut>(fixture: &Fixture, call: F) -> HerdResult
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    let call = Arc::new(call);
    let before = fixture.sandbox.stats();
    let (waits, failures) = stampede({
        let call = call.clone();
        move || call()
    })
    .await;
    let (refresh_requests, refreshes, reuses, revocations) =
        delta(&before, &fixture.sandbox.stats());
    let token = call().await.unwrap_or_default();
    HerdResult {
        waits,
        failures,
        refresh_requests,
        refreshes,
        reuses,
        revocations,
        token_works: works(fixture, &token).await,
    }
}

pub(crate) fn delta(before: &Stats, after: &Stats) -> (u64, u64, u64, u64) {
    (
        after.token_requests_for("refresh_token") - before.token_requests_for("refresh_token"),
        after.refreshes - before.refreshes,
        after.refresh_token_reuses - before.refresh_token_reuses,
        after.total_revocations() - before.total_revocations(),
    )
}

/// Whether the sandbox accepts `access_token` on `GET /v1/introspect`.
pub(crate) async fn works(fixture: &Fixture, access_token: &str) -> bool {
    reqwest::Client::new()
        .get(fixture.environment.api_url("/v1/introspect").unwrap())
        .bearer_auth(access_token)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

pub(crate) fn herd(fixture: &Fixture, summary: &mut Summary) {
    let runtime = multi_thread();
    let mut results: HashMap<&'static str, Vec<HerdResult>> = HashMap::new();

    // One sandbox round trip: a refresh at the token endpoint, sent by hand.
    let rtt = runtime.block_on(async {
        let (_, grant) = fixture.connect(seed::ACME_SE, Arc::new(SystemClock)).await;
        let http = reqwest::Client::new();
        let mut refresh = grant.refresh_token.unwrap().expose_secret().to_owned();
        let mut times = Vec::new();
        for _ in 0..30 {
            let started = Instant::now();
            let fresh = refresh_raw(&http, &fixture.token_url(), &refresh)
                .await
                .unwrap();
            times.push(started.elapsed());
            refresh = fresh.refresh_token;
        }
        times.sort();
        times[times.len() / 2]
    });

    for _ in 0..HERD_ROUNDS {
        // pleo-auth: a manual clock moved past the refresh point makes the token due.
        let result = runtime.block_on(async {
            let clock = ManualClock::new();
            let (manager, _) = fixture
                .connect(seed::ACME_DK, Arc::new(clock.clone()))
                .await;
            let subject = subject(seed::ACME_DK);
            manager.access_token(&subject).await.unwrap();
            clock.advance(ACCESS_TTL);
            herd_round(fixture, move || {
                let m = manager.clone();
                async move {
                    m.access_token(&subject)
                        .await
                        .map(|t| t.access_token().expose_secret().to_owned())
                        .map_err(|e| e.to_string())
                }
            })
            .await
        });
        results.entry("pleo-auth").or_default().push(result);

        // The mutex cache: one refresh under the lock, the others queue behind it.
        let result = runtime.block_on(async {
            let (_, grant) = fixture.connect(seed::ACME_SE, Arc::new(SystemClock)).await;
            let cache = Arc::new(MutexCache::new(&grant, fixture.token_url()));
            cache.expire().await;
            herd_round(fixture, move || {
                let c = cache.clone();
                async move { c.get().await }
            })
            .await
        });
        results
            .entry("Mutex<Option<Token>>")
            .or_default()
            .push(result);

        // yup-oauth2: its cache holds a token inside its one-minute margin.
        let result = runtime.block_on(async {
            let (_, grant) = fixture.connect(seed::GLOBEX, Arc::new(SystemClock)).await;
            let yup = Arc::new(Yup::new(fixture, &grant, Duration::from_secs(30)).await);
            herd_round(fixture, move || {
                let y = yup.clone();
                async move { y.get().await }
            })
            .await
        });
        results.entry("yup-oauth2").or_default().push(result);

        // The floor of any single-flight cache on this runtime: the first caller refreshes
        // inline inside a `tokio::sync::OnceCell`, the others wait for it and are woken at once.
        let result = runtime.block_on(async {
            let (_, grant) = fixture.connect(seed::ACME_SE, Arc::new(SystemClock)).await;
            let refresh_token = grant.refresh_token.unwrap().expose_secret().to_owned();
            let once = Arc::new(tokio::sync::OnceCell::<String>::new());
            let http = reqwest::Client::new();
            let token_url = fixture.token_url();
            herd_round(fixture, move || {
                let (once, http, token_url, refresh_token) = (
                    once.clone(),
                    http.clone(),
                    token_url.clone(),
                    refresh_token.clone(),
                );
                async move {
                    once.get_or_try_init(|| async {
                        refresh_raw(&http, &token_url, &refresh_token)
                            .await
                            .map(|t| t.access_token)
                    })
                    .await
                    .cloned()
                }
            })
            .await
        });
        results.entry(ONCE_CELL).or_default().push(result);
    }

    summary.note(format!(
        "herd: one sandbox round trip (a refresh sent by hand, median of 30) = {:.3} ms",
        ms(rtt)
    ));
    let goal = rtt + Duration::from_millis(1);
    for name in ["pleo-auth", "Mutex<Option<Token>>", "yup-oauth2", ONCE_CELL] {
        let rounds = &results[name];
        let mut waits: Vec<Duration> = rounds.iter().flat_map(|r| r.waits.clone()).collect();
        waits.sort();
        let p50 = waits[waits.len() / 2];
        let p99 = waits[waits.len() * 99 / 100];
        let max = *waits.last().unwrap();
        let per_round = |f: fn(&HerdResult) -> u64| {
            rounds
                .iter()
                .map(|r| f(r).to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut line = format!(
            "herd, {HERD} callers x {HERD_ROUNDS} rounds, {name}: refresh requests per round {}, \
             successful refreshes {}, reuses detected {}, grants revoked {}, failed callers {}, \
             token works afterwards {}; wait p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            per_round(|r| r.refresh_requests),
            per_round(|r| r.refreshes),
            per_round(|r| r.reuses),
            per_round(|r| r.revocations),
            per_round(|r| r.failures as u64),
            rounds
                .iter()
                .map(|r| if r.token_works { "yes" } else { "NO" })
                .collect::<Vec<_>>()
                .join("/"),
            ms(p50),
            ms(p99),
            ms(max),
        );
        if name == "pleo-auth" {
            let one_refresh = rounds.iter().all(|r| r.refresh_requests == 1);
            let in_time = p99 < goal;
            line.push_str(&format!(
                "\n  goal: 1 refresh per round ({}), p99 < one round trip + 1 ms = {:.3} ms ({})",
                met(one_refresh),
                ms(goal),
                met(in_time)
            ));
        }
        summary.note(line);
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}
