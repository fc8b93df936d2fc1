//! What checking that a record belongs at its key costs (issue 17): every typed read now
//! recomputes the record's own key from its fields and compares it with the key it was read
//! under.
//!
//! Two paired measurements, each a ratio to a baseline run in the same process, alternating
//! rounds of the two so that both see the same machine state; the median round counts:
//! - one grant: `OAuthGrant::decode_at` (decode + key check) vs `OAuthGrant::decode`;
//! - a batch of 1,000 grants from a `MemoryStore`: `get_records` (checks every key) vs
//!   `get_many` + `decode` (what a read cost before the check).
//!
//! `cargo bench --bench records`; `BENCHMARKS.md` records a run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pleo_auth_core::{
    AccessToken, ClientId, CredentialKey, EnvironmentName, MemoryStore, OAuthGrant, Precondition,
    Record, RecordStoreExt, RefreshToken, SecretStore, StoreKey, Subject, TenantId, Timestamp,
    layout,
};

const ROUNDS: usize = 31;
const SINGLE_ITERATIONS: usize = 20_000;
const BATCH: usize = 1_000;
const BATCH_ITERATIONS: usize = 20;

fn grant(n: u32) -> OAuthGrant {
    let subject: Subject = format!("urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-{n:012x}")
        .parse()
        .unwrap();
    let key = CredentialKey::new(
        EnvironmentName::new("production").unwrap(),
        ClientId::new("Acme-Integration").unwrap(),
        subject,
    );
    OAuthGrant {
        tenant: Some(TenantId::new(format!("ERP-{n}")).unwrap()),
        generation: 7,
        created_at: Timestamp::from_millis(1_700_000_000_000),
        ..OAuthGrant::connected(
            key,
            AccessToken::new(format!("at_{n:0>43}")),
            RefreshToken::new(format!("rt_{n:0>43}")),
            "users:read export-jobs:read".parse().unwrap(),
            Timestamp::from_millis(1_790_000_000_000),
            Duration::from_millis(10_000_000_000),
        )
    }
}

fn key_of(grant: &OAuthGrant) -> StoreKey {
    layout::oauth_grant(&CredentialKey::new(
        grant.environment.clone(),
        grant.client_id.clone(),
        grant.subject,
    ))
}

/// Times `rounds` alternating rounds of `a` and `b`; the median time per call of each.
fn paired(mut a: impl FnMut(), mut b: impl FnMut(), calls_per_round: usize) -> (f64, f64) {
    let mut times_a = Vec::with_capacity(ROUNDS);
    let mut times_b = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        a();
        times_a.push(started.elapsed());
        let started = Instant::now();
        b();
        times_b.push(started.elapsed());
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_nanos() as f64 / calls_per_round as f64
    };
    (median(&mut times_a), median(&mut times_b))
}

fn main() {
    // One grant.
    let one = grant(1);
    let bytes = one.encode().unwrap();
    let key = key_of(&one);
    let (checked, plain) = paired(
        || {
            for _ in 0..SINGLE_ITERATIONS {
                black_box(OAuthGrant::decode_at(black_box(bytes.expose_secret()), &key).unwrap());
            }
        },
        || {
            for _ in 0..SINGLE_ITERATIONS {
                black_box(OAuthGrant::decode(black_box(bytes.expose_secret())).unwrap());
            }
        },
        SINGLE_ITERATIONS,
    );
    println!(
        "one grant: decode_at (with key check) {checked:.0} ns, decode {plain:.0} ns, ratio {:.2}x",
        checked / plain
    );

    // A batch of grants from a MemoryStore.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let keys: Vec<StoreKey> = runtime.block_on(async {
        let mut keys = Vec::with_capacity(BATCH);
        for n in 0..BATCH {
            let record = grant(n as u32);
            let key = key_of(&record);
            store
                .put_record(&key, &record, Precondition::Absent)
                .await
                .unwrap();
            keys.push(key);
        }
        keys
    });
    let (checked, plain) = paired(
        || {
            runtime.block_on(async {
                for _ in 0..BATCH_ITERATIONS {
                    black_box(store.get_records::<OAuthGrant>(&keys).await.unwrap());
                }
            })
        },
        || {
            runtime.block_on(async {
                for _ in 0..BATCH_ITERATIONS {
                    let read = store.get_many(&keys).await.unwrap();
                    let decoded: Vec<OAuthGrant> = read
                        .iter()
                        .flatten()
                        .map(|v| OAuthGrant::decode(v.value.expose_secret()).unwrap())
                        .collect();
                    black_box(decoded);
                }
            })
        },
        BATCH_ITERATIONS,
    );
    println!(
        "batch of {BATCH} grants: get_records (with key checks) {:.3} ms, get_many + decode {:.3} ms, ratio {:.2}x",
        checked / 1e6,
        plain / 1e6,
        checked / plain
    );
}
