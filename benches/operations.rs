//! Running for months: what the metrics cost on the hit path, and what a keep-alive sweep of
//! 100,000 grants costs in store round trips and wall time.
//!
//! 1. Hit path, metrics on vs off, in one run: `PleoAuth::credentials().credential_for()` of a
//!    cached grant (the `metrics` feature is compiled in; the future polled once by hand), timed
//!    with no recorder and with a
//!    Prometheus recorder installed for the timed thread, in alternating rounds; the ratio of
//!    the medians is reported (goal <= 1.1). The same for the metrics one API request records
//!    (a counter and a histogram by status class), against an empty loop.
//! 2. Sweep: `PleoAuth::keep_alive_once` over a `MemoryStore` holding 100,000 grant records
//!    (none old enough to refresh), behind a store wrapper that counts round trips, for three
//!    page sizes.
//!
//! `cargo bench -p pleo-auth --features oauth,metrics --bench operations`

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Instant, SystemTime};

use metrics_exporter_prometheus::PrometheusBuilder;
use pleo_auth::oauth::{KeepAliveOptions, OAuthConfig};
use pleo_auth::{
    ClientSecret, CredentialProvider, Environment, EnvironmentName, KeepAliveConfig, MemoryStore,
    OAuthGrant, PleoAuth, Precondition, RecordStoreExt, SecretStore, Subject, Timestamp, layout,
};
use pleo_auth_core::testing::FaultyStore;

mod support;

use support::{active_grant, company};

const SWEEP_GRANTS: usize = 100_000;
const HIT_GRANTS: usize = 1_000;
const ROUNDS: usize = 15;
const CALLS_PER_ROUND: usize = 200_000;

fn environment() -> Environment {
    Environment::custom("sandbox", "http://127.0.0.1:9/", "http://127.0.0.1:9/").unwrap()
}

/// `n` active grants whose tokens were issued now (nothing to refresh for a day).
async fn seed(store: &dyn SecretStore, n: usize) {
    let now = Timestamp::from_system_time(SystemTime::now());
    let name = EnvironmentName::new("sandbox").unwrap();
    for i in 0..n {
        let subject = company(i);
        let (key, record) = active_grant(&name, subject, now);
        store
            .put_record(&key, &record, Precondition::Absent)
            .await
            .unwrap();
    }
}

/// A memory store behind the store double, which counts every call that reaches the store (a
/// round trip on a networked backend).
type Counted = FaultyStore<MemoryStore>;

fn auth(store: Arc<Counted>) -> PleoAuth {
    let config = OAuthConfig::builder()
        .environment(environment())
        .client_id("bench")
        .client_secret(ClientSecret::new("bench-client-secret"))
        .redirect_uri("http://127.0.0.1/callback")
        .scopes("users:read")
        .build()
        .unwrap();
    PleoAuth::builder()
        .environment(environment())
        .store(store)
        .oauth(config)
        .build()
        .unwrap()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Nanoseconds per call of `f`, over one round.
fn per_call(mut f: impl FnMut(usize)) -> f64 {
    let started = Instant::now();
    for i in 0..CALLS_PER_ROUND {
        f(i);
    }
    started.elapsed().as_nanos() as f64 / CALLS_PER_ROUND as f64
}

fn hit_path(auth: &PleoAuth) {
    let provider = auth.credentials().clone();
    let subjects: Vec<Subject> = (0..HIT_GRANTS).map(company).collect();
    // A cache hit completes on its first poll; polling it by hand keeps an executor's own
    // cost out of the measurement.
    let mut context = Context::from_waker(Waker::noop());
    let mut hit = |i: usize| {
        let mut call = provider.credential_for(&subjects[i % HIT_GRANTS]);
        match call.as_mut().poll(&mut context) {
            Poll::Ready(credential) => {
                black_box(credential.unwrap());
            }
            Poll::Pending => panic!("a cached credential is ready at once"),
        }
    };
    let recorder = PrometheusBuilder::new().build_recorder();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut bare, mut recorded) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        off.push(per_call(&mut hit));
        on.push(metrics::with_local_recorder(&recorder, || {
            per_call(&mut hit)
        }));
        bare.push(per_call(|i| {
            black_box(i);
        }));
        recorded.push(metrics::with_local_recorder(&recorder, || {
            per_call(|i| {
                metrics::counter!("pleo_auth_requests_total", "status_class" => "2xx").increment(1);
                metrics::histogram!("pleo_auth_request_duration_seconds", "status_class" => "2xx")
                    .record(black_box(i as f64) * 1e-9);
            })
        }));
    }
    // Nothing is recorded on the hit path at all: a debugging recorder sees no sample.
    let debugging = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = debugging.snapshotter();
    metrics::with_local_recorder(&debugging, || per_call(&mut hit));
    let samples = snapshotter.snapshot().into_vec().len();
    assert_eq!(samples, 0, "the hit path records no metric");
    println!("metrics recorded on the hit path in {CALLS_PER_ROUND} calls: {samples}");
    let (off, on) = (median(off), median(on));
    println!(
        "hit path (credential_for, cached): metrics off {off:.1} ns, on {on:.1} ns, on/off {:.3}",
        on / off
    );
    let (bare, recorded) = (median(bare), median(recorded));
    println!(
        "per API request, the metrics recorded (counter + histogram, Prometheus recorder): {:.1} ns",
        recorded - bare
    );
}

async fn sweeps() {
    let store = Arc::new(Counted::default());
    seed(store.as_ref(), SWEEP_GRANTS).await;
    let auth = auth(store.clone());
    // The floor: list the grants and read and decode them in pages of 1,000, nothing else.
    let prefix = layout::oauth_grants(
        &EnvironmentName::new("sandbox").unwrap(),
        &"bench".parse().unwrap(),
    );
    store.take_calls();
    let started = Instant::now();
    let keys = store.list(&prefix).await.unwrap();
    for page in keys.chunks(1000) {
        black_box(store.get_records::<OAuthGrant>(page).await.unwrap());
    }
    let floor = started.elapsed();
    let floor_calls = store.take_calls().round_trips();
    println!(
        "floor (list, then get_records per 1,000): {:.0} ms, {floor_calls} store round trips",
        floor.as_secs_f64() * 1000.0
    );
    for page in [100, 500, 1000] {
        store.take_calls();
        let started = Instant::now();
        let run = auth
            .keep_alive_once(
                &KeepAliveConfig::default().sweep(KeepAliveOptions::default().page_size(page)),
            )
            .await
            .unwrap();
        let took = started.elapsed();
        let by_op = store.take_calls();
        let calls = by_op.round_trips();
        let report = run.report().expect("this process sweeps");
        assert_eq!(report.checked, SWEEP_GRANTS);
        assert_eq!(report.failures(), 0);
        println!(
            "sweep of {SWEEP_GRANTS} grants, pages of {page}: {:.0} ms ({:.2}x the floor), {calls} store round trips {by_op:?}",
            took.as_secs_f64() * 1000.0,
            took.as_secs_f64() / floor.as_secs_f64()
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if wanted("hit_path") {
        let store = Arc::new(Counted::default());
        runtime.block_on(seed(store.as_ref(), HIT_GRANTS));
        let auth = runtime.block_on(async {
            let auth = auth(store.clone());
            let manager = auth.token_manager().unwrap();
            for i in 0..HIT_GRANTS {
                manager.access_token(&company(i)).await.unwrap();
            }
            auth
        });
        let _guard = runtime.enter();
        hit_path(&auth);
    }
    if wanted("sweep") {
        runtime.block_on(sweeps());
    }
}
