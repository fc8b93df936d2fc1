//! Stores.

use super::*;

/// About the size of a stored grant record.
pub(crate) fn record_value() -> SecretBytes {
    SecretBytes::new(vec![b'x'; 700])
}

pub(crate) fn stores(criterion: &mut Criterion, summary: &mut Summary) {
    let runtime = current_thread();
    let run = random_urlsafe(6).replace(['-', '_'], "x");
    let key = StoreKey::parse(&format!("bench/{run}/grant")).unwrap();

    // Redis: HMGET and HSET with redis-rs against our get and our compare-and-swap put (Lua).
    let (redis_store, mut redis_raw) = runtime.block_on(async {
        let url = service_env("PLEO_AUTH_TEST_REDIS_URL");
        let store = RedisStore::builder(url.as_str())
            .key_prefix(format!("pleo-bench:{run}:"))
            .connect()
            .await
            .unwrap();
        let raw = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        (store, raw)
    });
    let redis_key = format!("pleo-bench:{run}:raw");
    store_group(
        criterion,
        summary,
        &runtime,
        "store_redis",
        &redis_store,
        &key,
        |_| {
            let mut conn = redis_raw.clone();
            let key = redis_key.clone();
            async move {
                let read: (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("n")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(read);
            }
        },
        |_| {
            let mut conn = redis_raw.clone();
            let key = redis_key.clone();
            async move {
                let () = redis::cmd("HSET")
                    .arg(&key)
                    .arg("v")
                    .arg(record_value().expose_secret())
                    .arg("n")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        },
        "HMGET",
        "HSET (unconditional)",
        1.2,
    );
    // Round trips of one compare-and-swap put: the commands the server ran per put. A script's
    // own calls (HGET, INCR, HSET) count as commands too; only EVALSHA comes from the client.
    let per_put = runtime.block_on(async {
        let mut version = redis_store
            .put(&key, record_value(), Precondition::None)
            .await
            .unwrap();
        const PUTS: u64 = 200;
        let before = command_calls(&mut redis_raw).await;
        for _ in 0..PUTS {
            version = redis_store
                .put(&key, record_value(), Precondition::Version(version))
                .await
                .unwrap();
        }
        let after = command_calls(&mut redis_raw).await;
        let mut per_put: Vec<(String, f64)> = after
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, calls)| {
                let delta = calls - before.get(name).copied().unwrap_or(0);
                (name.clone(), delta as f64 / PUTS as f64)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        per_put.sort_by(|a, b| a.0.cmp(&b.0));
        per_put
    });
    let one_round_trip = per_put.iter().all(|(name, n)| match name.as_str() {
        "evalsha" | "hget" | "incr" | "hset" => (*n - 1.0).abs() < f64::EPSILON,
        _ => false,
    }) && per_put.iter().any(|(name, _)| name == "evalsha");
    summary.note(format!(
        "redis: commands the server ran per compare-and-swap put: {} -> {} (goal: one round trip: {})",
        per_put
            .iter()
            .map(|(name, n)| format!("{name} {n:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        if one_round_trip {
            "one EVALSHA from the client, the script's HGET, INCR and HSET inside it"
        } else {
            "more than one request from the client"
        },
        met(one_round_trip)
    ));

    // OpenBao: vaultrs kv2 read and check-and-set write against ours.
    let vault_addr = service_env("PLEO_AUTH_TEST_VAULT_ADDR");
    let vault_token = service_env("PLEO_AUTH_TEST_VAULT_TOKEN");
    let prefix = format!("pleo-bench/{run}");
    let vault_store = VaultStore::builder(&vault_addr)
        .token(&vault_token)
        .path_prefix(&prefix)
        .build()
        .unwrap();
    let vault_raw = Arc::new(
        vaultrs::client::VaultClient::new(
            vaultrs::client::VaultClientSettingsBuilder::default()
                .address(&vault_addr)
                .token(&vault_token)
                .build()
                .unwrap(),
        )
        .unwrap(),
    );
    let raw_path = format!("{prefix}/raw");
    let raw_data = serde_json::json!({ "value": "x".repeat(936), "nonce": "n" });
    let cas = Arc::new(std::sync::atomic::AtomicU64::new(
        runtime
            .block_on(vaultrs::kv2::set(
                &*vault_raw,
                "secret",
                &raw_path,
                &raw_data,
            ))
            .unwrap()
            .version,
    ));
    store_group(
        criterion,
        summary,
        &runtime,
        "store_openbao",
        &vault_store,
        &key,
        |_| {
            let client = vault_raw.clone();
            let path = raw_path.clone();
            async move {
                let read: serde_json::Value =
                    vaultrs::kv2::read(&*client, "secret", &path).await.unwrap();
                black_box(read);
            }
        },
        |_| {
            let client = vault_raw.clone();
            let path = raw_path.clone();
            let data = raw_data.clone();
            let cas = cas.clone();
            async move {
                let current = cas.load(std::sync::atomic::Ordering::Relaxed);
                let written = vaultrs::kv2::set_with_options(
                    &*client,
                    "secret",
                    &path,
                    &data,
                    vaultrs::api::kv2::requests::SetSecretRequestOptions {
                        cas: current as u32,
                    },
                )
                .await
                .unwrap();
                cas.store(written.version, std::sync::atomic::Ordering::Relaxed);
            }
        },
        "kv2 read",
        "kv2 write with cas",
        1.2,
    );

    // moto: GetSecretValue and the compare-and-swap recipe (PutSecretValue with a label, then
    // UpdateSecretVersionStage moving AWSCURRENT) with the SDK against ours.
    let aws_store = runtime.block_on(aws_store(&format!("pleo-bench/{run}/")));
    let sdk = aws_store.client().clone();
    let raw_name = format!("pleo-bench/{run}/raw");
    let current = Arc::new(std::sync::Mutex::new(
        runtime
            .block_on(
                sdk.create_secret()
                    .name(&raw_name)
                    .secret_binary(Blob::new(record_value().expose_secret().to_vec()))
                    .send(),
            )
            .unwrap()
            .version_id
            .unwrap(),
    ));
    store_group(
        criterion,
        summary,
        &runtime,
        "store_moto",
        &aws_store,
        &key,
        |_| {
            let sdk = sdk.clone();
            let name = raw_name.clone();
            async move {
                let read = sdk
                    .get_secret_value()
                    .secret_id(&name)
                    .version_stage("AWSCURRENT")
                    .send()
                    .await
                    .unwrap();
                black_box(read);
            }
        },
        |_| {
            let sdk = sdk.clone();
            let name = raw_name.clone();
            let current = current.clone();
            async move {
                let expected = current.lock().unwrap().clone();
                let written = sdk
                    .put_secret_value()
                    .secret_id(&name)
                    .secret_binary(Blob::new(record_value().expose_secret().to_vec()))
                    .version_stages("bench-pending")
                    .send()
                    .await
                    .unwrap()
                    .version_id
                    .unwrap();
                sdk.update_secret_version_stage()
                    .secret_id(&name)
                    .version_stage("AWSCURRENT")
                    .move_to_version_id(&written)
                    .remove_from_version_id(&expected)
                    .send()
                    .await
                    .unwrap();
                *current.lock().unwrap() = written;
            }
        },
        "GetSecretValue",
        "PutSecretValue + UpdateSecretVersionStage",
        1.2,
    );
    postgres_group(criterion, summary, &runtime, &run);

    // moto finds a secret by scanning them all: leave none behind.
    runtime.block_on(async {
        for name in [raw_name.clone(), aws_store.secret_name(&key)] {
            sdk.delete_secret()
                .secret_id(name)
                .force_delete_without_recovery(true)
                .send()
                .await
                .unwrap();
        }
    });
}

/// A migrated PostgreSQL store in a fresh schema, and a raw sqlx pool of the same size and
/// statement timeout on the same database.
pub(crate) async fn postgres_pair(schema: &str) -> (PostgresStore, sqlx::PgPool) {
    let url = service_env("PLEO_AUTH_TEST_POSTGRES_URL");
    let store = PostgresStore::builder(&url)
        .schema(schema)
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options.options([("statement_timeout", "5000")]))
        .await
        .unwrap();
    (store, raw)
}

/// PostgreSQL: the same two statements with sqlx directly against ours.
pub(crate) fn postgres_group(
    criterion: &mut Criterion,
    summary: &mut Summary,
    runtime: &Runtime,
    run: &str,
) {
    let schema = format!("bench_{}", run.to_lowercase());
    let key = StoreKey::parse(&format!("bench/{run}/grant")).unwrap();
    let (store, raw) = runtime.block_on(postgres_pair(&schema));
    let table = format!("\"{schema}\".\"secrets\"");
    let sequence = format!("\"{schema}\".\"secrets_generation\"");
    let select: Arc<str> = format!("SELECT generation, value FROM {table} WHERE key = $1").into();
    let update: Arc<str> = format!(
        "UPDATE {table} SET generation = nextval('{sequence}'), value = $3, \
         updated_at = clock_timestamp() WHERE key = $1 AND generation = $2 RETURNING generation"
    )
    .into();
    let raw_key = format!("bench/{run}/raw");
    let generation = Arc::new(std::sync::atomic::AtomicI64::new(
        runtime
            .block_on(store.put(
                &StoreKey::parse(&raw_key).unwrap(),
                record_value(),
                Precondition::None,
            ))
            .unwrap()
            .as_u64()
            .unwrap() as i64,
    ));
    store_group(
        criterion,
        summary,
        runtime,
        "store_postgres",
        &store,
        &key,
        |_| {
            let (raw, select, key) = (raw.clone(), select.clone(), raw_key.clone());
            async move {
                let row = sqlx::query(sqlx::AssertSqlSafe(select))
                    .bind(key)
                    .fetch_optional(&raw)
                    .await
                    .unwrap()
                    .unwrap();
                use sqlx::Row as _;
                black_box((row.get::<i64, _>(0), row.get::<Vec<u8>, _>(1)));
            }
        },
        |_| {
            let (raw, update, key) = (raw.clone(), update.clone(), raw_key.clone());
            let generation = generation.clone();
            async move {
                let current = generation.load(std::sync::atomic::Ordering::Relaxed);
                let next: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(update))
                    .bind(key)
                    .bind(current)
                    .bind(record_value().expose_secret())
                    .fetch_one(&raw)
                    .await
                    .unwrap();
                generation.store(next, std::sync::atomic::Ordering::Relaxed);
            }
        },
        "sqlx SELECT",
        "sqlx UPDATE .. WHERE generation",
        1.15,
    );
    // Paired: ours and raw sqlx in turn, medians of 1,000 pairs each, so that load from other
    // processes on this machine falls on both alike.
    let raw_store_key = StoreKey::parse(&raw_key).unwrap();
    let (mut ours_get, mut raw_get, mut ours_put, mut raw_put) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        use sqlx::Row as _;
        let mut version = store
            .put(&key, record_value(), Precondition::None)
            .await
            .unwrap();
        let mut generation = store
            .put(&raw_store_key, record_value(), Precondition::None)
            .await
            .unwrap()
            .as_u64()
            .unwrap() as i64;
        for _ in 0..1_000 {
            let started = Instant::now();
            black_box(store.get(&key).await.unwrap().unwrap());
            ours_get.push(started.elapsed());
            let started = Instant::now();
            let row = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                .bind(&raw_key)
                .fetch_optional(&raw)
                .await
                .unwrap()
                .unwrap();
            black_box((row.get::<i64, _>(0), row.get::<Vec<u8>, _>(1)));
            raw_get.push(started.elapsed());
            let started = Instant::now();
            version = store
                .put(&key, record_value(), Precondition::Version(version))
                .await
                .unwrap();
            ours_put.push(started.elapsed());
            let started = Instant::now();
            generation = sqlx::query_scalar(sqlx::AssertSqlSafe(update.clone()))
                .bind(&raw_key)
                .bind(generation)
                .bind(record_value().expose_secret())
                .fetch_one(&raw)
                .await
                .unwrap();
            raw_put.push(started.elapsed());
        }
    });
    summary.measured(
        "postgres: our get vs sqlx SELECT, paired medians".to_owned(),
        median(&mut ours_get),
        median(&mut raw_get),
        Some(1.15),
    );
    summary.measured(
        "postgres: our compare-and-swap put vs sqlx UPDATE, paired medians".to_owned(),
        median(&mut ours_put),
        median(&mut raw_put),
        Some(1.15),
    );
}

/// An AWS Secrets Manager store on moto, its secrets named under `prefix`.
pub(crate) async fn aws_store(prefix: &str) -> AwsStore {
    AwsStore::builder()
        .endpoint_url(service_env("PLEO_AUTH_TEST_AWS_ENDPOINT"))
        .region("eu-west-1")
        .static_credentials("AKIDBENCH", "bench-secret-access-key")
        .name_prefix(prefix)
        .build()
        .await
        .unwrap()
}
