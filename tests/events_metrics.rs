//! One event stream and the metrics, against the sandbox with the clock advanced past many
//! expiries: every event kind appears with its tenant, subject, environment, method and time;
//! no event carries a secret (canary scan); the metric values equal the sandbox's own counters;
//! no metric label names a company, tenant or token (the `metrics-util` debugging recorder);
//! a slow subscriber never holds up refreshes (bounded, with a lagged counter).
#![cfg(all(
    feature = "oauth",
    feature = "apikey",
    feature = "http",
    feature = "sandbox",
    feature = "metrics"
))]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pleo_auth::apikey::{ApiKeyConfig, ConnectOptions};
use pleo_auth::oauth::AuthorizeOptions;
use pleo_auth::sandbox::{Endpoint, Fault, seed};
use pleo_auth::{
    ApiKey, ClientId, CompanyId, CredentialKey, CredentialKind, EventKind, KeepAliveConfig,
    ManualClock, MemoryStore, PleoEvent, Precondition, SecretBytes, SecretStore, TenantId, layout,
};

mod events_support;
mod reliability_support;

use events_support::{
    ACCESS_TTL, CANARY, auth_builder, company, consent, eventually, fast_policy, start_sandbox,
};
use reliability_support::FaultyStore;

/// One snapshot of the debugging recorder.
type Snapshot = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The sum of the series of `name` whose labels include `labels` (counters and gauges by
/// value, histograms by sample count).
fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && labels.iter().all(|(k, v)| {
                    key.key()
                        .labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(g) => g.into_inner() as u64,
        })
        .sum()
}

/// The whole story: every event kind, its fields, the metrics equal to the sandbox's counters,
/// and no identifying label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_kind_and_the_metrics_match_the_sandbox() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    pleo_auth::metrics::describe();

    let (sandbox, environment) = start_sandbox().await;
    let clock = ManualClock::new();
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let seen: Arc<Mutex<Vec<PleoEvent>>> = Arc::default();
    let auth = auth_builder(&environment, &clock, store.clone())
        .api_keys(ApiKeyConfig::new(
            environment.clone(),
            ClientId::new(seed::DEMO_CLIENT_ID).unwrap(),
        ))
        .on_event({
            let seen = seen.clone();
            move |event: &PleoEvent| seen.lock().unwrap().push(event.clone())
        })
        .build()
        .unwrap();
    let mut broadcast = auth.subscribe();
    let advance = |by: Duration| {
        clock.advance(by);
        sandbox.advance_clock(by);
    };
    let manager = auth.token_manager().unwrap();
    let (acme, sweden, globex) = (
        company(seed::ACME_DK),
        company(seed::ACME_SE),
        company(seed::GLOBEX),
    );

    // connected: Acme Denmark with a tenant, Acme Sweden without.
    let back = consent(
        &auth,
        AuthorizeOptions::new().tenant(TenantId::new("erp-acme").unwrap()),
        acme,
    )
    .await;
    auth.oauth().unwrap().complete(&back).await.unwrap();
    let back = consent(&auth, AuthorizeOptions::new(), sweden).await;
    auth.oauth().unwrap().complete(&back).await.unwrap();

    // refreshed: ten expiries in a row.
    for _ in 0..10 {
        advance(ACCESS_TTL + Duration::from_secs(1));
        manager.access_token(&acme).await.unwrap();
    }
    // refresh_failed, then recovered: Pleo answers 503 once.
    advance(ACCESS_TTL + Duration::from_secs(1));
    sandbox.inject_fault(Endpoint::Token, Fault::ServerError(503), 1);
    manager.access_token(&acme).await.unwrap_err();
    advance(fast_policy().cooldown + Duration::from_secs(1));
    manager.access_token(&acme).await.unwrap();
    // persist_pending, then persist_recovered: the store refuses the rotated pair for a while.
    advance(ACCESS_TTL + Duration::from_secs(1));
    store.fail_writes.store(true, Ordering::SeqCst);
    manager.access_token(&acme).await.unwrap();
    store.fail_writes.store(false, Ordering::SeqCst);
    manager.flush().await.unwrap();

    // needs_reauthorization: Pleo revoked Acme Sweden's grant.
    sandbox.revoke_grant(pleo_auth::sandbox::RevokeTarget::Client {
        client_id: seed::DEMO_CLIENT_ID.to_owned(),
        subject: seed::ACME_SE,
    });
    advance(ACCESS_TTL + Duration::from_secs(1));
    manager.access_token(&sweden).await.unwrap_err();

    // revocation_dangling: a connect meant for Globex comes back for Acme Denmark, which is
    // kept: its new grant cannot be revoked without ending the kept one.
    let back = consent(&auth, AuthorizeOptions::new().expect_subject(globex), acme).await;
    auth.oauth().unwrap().complete(&back).await.unwrap_err();

    // Integrated key: connected, key_needs_replacement, key_replaced (+ recovered),
    // disconnected (removed).
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    auth.api_keys()
        .unwrap()
        .connect_with(
            ApiKey::new(key.clone()),
            ConnectOptions::new().tenant(TenantId::new("erp-globex").unwrap()),
        )
        .await
        .unwrap();
    assert!(sandbox.revoke_api_key(&key));
    auth.client()
        .get("/v2/employees")
        .tenant("erp-globex")
        .send()
        .await
        .unwrap_err();
    let new_key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    let globex_id = CompanyId::from_uuid(seed::GLOBEX);
    auth.api_keys()
        .unwrap()
        .replace(globex_id, ApiKey::new(new_key))
        .await
        .unwrap();
    auth.client()
        .get("/v2/employees")
        .tenant("erp-globex")
        .send()
        .await
        .unwrap();
    auth.api_keys().unwrap().remove(globex_id).await.unwrap();

    // record_unreadable: Acme Sweden's record is damaged; keep-alive reports it and goes on.
    let sweden_key = layout::oauth_grant(&CredentialKey::new(
        environment.name().clone(),
        ClientId::new(seed::DEMO_CLIENT_ID).unwrap(),
        sweden,
    ));
    store
        .put(
            &sweden_key,
            SecretBytes::new(b"garbage".to_vec()),
            Precondition::None,
        )
        .await
        .unwrap();
    let run = auth
        .keep_alive_once(&KeepAliveConfig::default())
        .await
        .unwrap();
    assert_eq!(run.report().unwrap().unreadable.len(), 1);

    // disconnected: Acme Denmark is disconnected at Pleo.
    manager.disconnect(&acme).await.unwrap();

    let expected = [
        "connected",
        "refreshed",
        "refresh_failed",
        "needs_reauthorization",
        "recovered",
        "key_needs_replacement",
        "key_replaced",
        "disconnected",
        "persist_pending",
        "persist_recovered",
        "revocation_dangling",
        "record_unreadable",
    ];
    eventually("every event kind", || {
        let seen = seen.lock().unwrap();
        expected
            .iter()
            .all(|kind| seen.iter().any(|e| e.kind.as_str() == *kind))
            && seen.iter().any(|e| {
                matches!(
                    e.kind,
                    EventKind::Disconnected {
                        revoked_at_pleo: true
                    }
                )
            })
    })
    .await;
    let events = seen.lock().unwrap().clone();

    // Fields: environment, method, subject, tenant, time.
    for event in &events {
        assert_eq!(&event.environment, environment.name(), "{event:?}");
        assert!(event.at.as_millis() > 0, "{event:?}");
    }
    let of = |kind: &str| -> Vec<&PleoEvent> {
        events.iter().filter(|e| e.kind.as_str() == kind).collect()
    };
    let refreshed = of("refreshed");
    // Ten expiries, the recovery, the pending pair, and the refresh disconnect needs to call
    // Pleo with a valid token: one event per rotation the sandbox made.
    assert_eq!(refreshed.len() as u64, sandbox.stats().refreshes);
    assert_eq!(refreshed.len(), 13);
    for event in &refreshed {
        assert_eq!(event.subject, Some(acme));
        assert_eq!(event.method, CredentialKind::OAuth);
        assert_eq!(
            event.tenant.as_ref().map(TenantId::as_str),
            Some("erp-acme")
        );
    }
    let failed = of("refresh_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].kind,
        EventKind::RefreshFailed {
            error: "unavailable",
            retryable: true
        }
    );
    let recovered = of("recovered");
    assert!(
        recovered
            .iter()
            .any(|e| e.subject == Some(acme) && e.method == CredentialKind::OAuth),
        "{recovered:?}"
    );
    assert!(
        recovered.iter().any(|e| e.subject == Some(globex)
            && e.method == CredentialKind::IntegratedApiKey
            && e.tenant.as_ref().map(TenantId::as_str) == Some("erp-globex")),
        "{recovered:?}"
    );
    let reauth = of("needs_reauthorization");
    assert_eq!(reauth.len(), 1);
    assert_eq!(reauth[0].subject, Some(sweden));
    assert_eq!(reauth[0].tenant, None);
    assert_eq!(
        of("key_needs_replacement")[0].method,
        CredentialKind::IntegratedApiKey
    );
    assert_eq!(
        of("revocation_dangling")[0].kind,
        EventKind::RevocationDangling {
            reason: "refused",
            unsafe_to_revoke: true
        }
    );
    assert_eq!(of("record_unreadable")[0].subject, Some(sweden));
    let connected: Vec<_> = of("connected")
        .iter()
        .map(|e| (e.subject, e.method, e.tenant.clone()))
        .collect();
    assert!(connected.contains(&(
        Some(acme),
        CredentialKind::OAuth,
        Some(TenantId::new("erp-acme").unwrap())
    )));
    assert!(connected.contains(&(
        Some(globex),
        CredentialKind::IntegratedApiKey,
        Some(TenantId::new("erp-globex").unwrap())
    )));

    // The broadcast receiver saw the same events in the same order.
    let mut broadcasted = Vec::new();
    while let Ok(event) = broadcast.try_recv() {
        broadcasted.push(event);
    }
    assert_eq!(broadcasted, events);
    assert_eq!(auth.events_lagged(), 0);

    // No secret in any event, in its Debug or its JSON.
    let text = format!("{events:?}{}", serde_json::to_string(&events).unwrap());
    assert!(!text.contains(CANARY), "an event carries a secret");
    let json = serde_json::to_value(refreshed[0]).unwrap();
    assert_eq!(json["event"], "refreshed");
    assert_eq!(json["tenant"], "erp-acme");
    assert_eq!(json["method"], "oauth");
    assert_eq!(json["subject"], acme.to_string());

    // Metrics equal the sandbox's own counters (one snapshot: the recorder drains on read).
    let snapshot: Snapshot = snapshotter.snapshot().into_vec();
    let stats = sandbox.stats();
    let refresh_requests = stats
        .token_requests
        .get("refresh_token")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        counter(
            &snapshot,
            "pleo_auth_refreshes_total",
            &[("outcome", "success")]
        ),
        stats.refreshes
    );
    assert_eq!(
        counter(
            &snapshot,
            "pleo_auth_refreshes_total",
            &[("outcome", "failed")]
        ),
        stats
            .faults_injected
            .get(&Endpoint::Token)
            .copied()
            .unwrap_or(0)
    );
    assert_eq!(
        counter(
            &snapshot,
            "pleo_auth_refreshes_total",
            &[("outcome", "reauthorization_required")]
        ),
        refresh_requests.errors_with("invalid_grant")
    );
    assert_eq!(
        counter(&snapshot, "pleo_auth_reauthorizations_needed_total", &[]),
        1
    );
    assert_eq!(
        counter(&snapshot, "pleo_auth_refresh_duration_seconds", &[]),
        refresh_requests.total
            + stats
                .faults_injected
                .get(&Endpoint::Token)
                .copied()
                .unwrap_or(0),
        "one latency sample per token-endpoint request"
    );
    assert_eq!(
        counter(
            &snapshot,
            "pleo_auth_keys_needing_replacement_total",
            &[("method", "integrated_api_key")]
        ),
        1
    );
    // The authenticated client's requests (the others are the methods' own calls to Pleo:
    // key validation, the revocation).
    let employees: Vec<u16> = sandbox
        .request_log()
        .iter()
        .filter(|r| r.path == "/v2/employees")
        .map(|r| r.status)
        .collect();
    assert_eq!(employees, vec![401, 200]);
    assert_eq!(counter(&snapshot, "pleo_auth_requests_total", &[]), 2);
    assert_eq!(
        counter(
            &snapshot,
            "pleo_auth_requests_total",
            &[("status_class", "4xx")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            "pleo_auth_request_duration_seconds",
            &[("status_class", "2xx")]
        ),
        1
    );
    assert!(
        counter(
            &snapshot,
            "pleo_auth_store_operations_total",
            &[("backend", "custom"), ("op", "put"), ("outcome", "error")]
        ) >= 1,
        "the refused writes are counted"
    );
    assert!(
        counter(
            &snapshot,
            "pleo_auth_store_duration_seconds",
            &[("backend", "custom")]
        ) > 0
    );
    assert!(
        counter(
            &snapshot,
            "pleo_auth_leases_total",
            &[("outcome", "acquired")]
        ) >= 12
    );
    assert_eq!(
        counter(&snapshot, "pleo_auth_grants", &[("state", "unreadable")]),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            "pleo_auth_keep_alive_failures_total",
            &[("reason", "unreadable")]
        ),
        1
    );

    // No label names a company, tenant, token or key; every label is one of a few names.
    let allowed = [
        "outcome",
        "event",
        "method",
        "backend",
        "op",
        "status_class",
        "state",
        "reason",
    ];
    let forbidden: Vec<String> = [seed::ACME_DK, seed::ACME_SE, seed::GLOBEX]
        .iter()
        .map(ToString::to_string)
        .chain([
            "erp-acme".to_owned(),
            "erp-globex".to_owned(),
            CANARY.to_owned(),
        ])
        .collect();
    assert!(snapshot.len() > 10);
    for (key, ..) in &snapshot {
        for label in key.key().labels() {
            assert!(
                allowed.contains(&label.key()),
                "label {} on {}",
                label.key(),
                key.key().name()
            );
            assert!(
                forbidden
                    .iter()
                    .all(|f| !label.value().contains(f.as_str())),
                "label {}={} on {}",
                label.key(),
                label.value(),
                key.key().name()
            );
            assert!(label.value().len() <= 32, "{}", label.value());
        }
    }
    sandbox.shutdown().await;
}
