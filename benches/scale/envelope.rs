//! Envelope encryption.

use super::*;

/// moto's KMS: a new symmetric key, and the SDK configuration the provider uses.
pub(crate) async fn moto_kms_key() -> (aws_config::SdkConfig, String, String) {
    use aws_sdk_kms::config::{Credentials, Region, SharedCredentialsProvider};
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDBENCH",
            "bench-secret-access-key",
            None,
            None,
            "bench",
        )))
        .build();
    let endpoint = service_env("PLEO_AUTH_TEST_AWS_ENDPOINT");
    let client = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&sdk)
            .endpoint_url(&endpoint)
            .build(),
    );
    let key = client
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    (sdk, endpoint, key)
}

/// Reads of one record on PostgreSQL: plain, sealed with a cached KMS data key, and sealed with
/// no cache (a KMS `Decrypt` on moto per read).
pub(crate) fn envelope(criterion: &mut Criterion, summary: &mut Summary) {
    let runtime = current_thread();
    let run = random_urlsafe(6).replace(['-', '_'], "x").to_lowercase();
    let key = StoreKey::parse(&format!("bench/{run}/grant")).unwrap();
    let (plain, cached, cold) = runtime.block_on(async {
        let (store, _) = postgres_pair(&format!("envelope_{run}")).await;
        let (sdk, endpoint, kms_key) = moto_kms_key().await;
        let provider = |ttl: Duration| {
            AwsKmsKeyProvider::builder(&kms_key)
                .sdk_config(sdk.clone())
                .endpoint_url(&endpoint)
                .cache_ttl(ttl)
                .connect()
        };
        let cached = EncryptedStore::new(
            store.clone(),
            provider(Duration::from_secs(3600)).await.unwrap(),
        );
        let cold = EncryptedStore::new(store.clone(), provider(Duration::ZERO).await.unwrap());
        cached
            .put(&key, record_value(), Precondition::None)
            .await
            .unwrap();
        (store, cached, cold)
    });
    let plain_key = StoreKey::parse(&format!("bench/{run}/plain")).unwrap();
    runtime
        .block_on(plain.put(&plain_key, record_value(), Precondition::None))
        .unwrap();
    let mut g = criterion.benchmark_group("envelope_postgres");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    let mut read = |name: &str, store: &dyn SecretStore, key: &StoreKey| {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(timed(iters, || async {
                    black_box(store.get(key).await.unwrap().unwrap());
                }))
            })
        });
    };
    read("plain_get", &plain, &plain_key);
    read("kms_cached_get", &cached, &key);
    read("kms_cold_get", &cold, &key);
    g.finish();
    // Paired: one plain read and one encrypted read in turn, so that load from other processes
    // on this machine falls on both alike; medians of 2,000 pairs.
    let (mut plain_times, mut cached_times) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for _ in 0..2_000 {
            let started = Instant::now();
            black_box(plain.get(&plain_key).await.unwrap().unwrap());
            plain_times.push(started.elapsed());
            let started = Instant::now();
            black_box(cached.get(&key).await.unwrap().unwrap());
            cached_times.push(started.elapsed());
        }
    });
    summary.measured(
        "postgres: encrypted read, cached KMS data key vs unencrypted, paired medians".to_owned(),
        median(&mut cached_times),
        median(&mut plain_times),
        Some(1.2),
    );
    summary.ratio(
        "postgres: encrypted read, cached KMS data key vs the same read unencrypted".to_owned(),
        "envelope_postgres",
        "kms_cached_get",
        "plain_get",
        Some(1.2),
    );
    summary.ratio(
        "postgres: encrypted read, cold cache (KMS Decrypt on moto per read) vs unencrypted"
            .to_owned(),
        "envelope_postgres",
        "kms_cold_get",
        "plain_get",
        None,
    );
}
