//! The webhook example (`examples/webhook_events.rs`) delivers events to a real receiver on
//! loopback: JSON bodies with a valid HMAC signature, a retry after the receiver failed, the
//! same delivery id on the retry, and no secret in any body.
#![cfg(all(feature = "oauth", feature = "sandbox"))]

#[path = "../examples/webhook_events.rs"]
#[allow(dead_code, reason = "the example's main is not called here")]
mod webhook_events;

mod events_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use events_support::{
    ACCESS_TTL, CANARY, auth_builder, company, consent, eventually, start_sandbox,
};
use pleo_auth::oauth::AuthorizeOptions;
use pleo_auth::sandbox::seed;
use pleo_auth::{ManualClock, MemoryStore};
use webhook_events::{Webhook, signature, verify};

const SECRET: &[u8] = b"webhook-shared-secret";

/// What the receiver saw: (delivery id, verified, body) per request.
#[derive(Default)]
struct Received {
    requests: Vec<(String, bool, serde_json::Value)>,
    fail_next: u32,
}

async fn receive(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp: u64 = header("x-pleo-auth-timestamp").parse().unwrap_or(0);
    let verified = verify(SECRET, timestamp, &body, &header("x-pleo-auth-signature"));
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let mut received = received.lock().unwrap();
    received
        .requests
        .push((header("x-pleo-auth-delivery"), verified, json));
    if received.fail_next > 0 {
        received.fail_next -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_example_delivers_signed_events_and_retries() {
    let received = Arc::new(Mutex::new(Received {
        fail_next: 1,
        ..Received::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (webhook, _delivery) = Webhook::start(url, SECRET.to_vec(), Duration::from_millis(20));
    let (sandbox, environment) = start_sandbox().await;
    let clock = ManualClock::new();
    let auth = auth_builder(&environment, &clock, Arc::new(MemoryStore::new()))
        .on_event(webhook.sink())
        .build()
        .unwrap();
    let acme = company(seed::ACME_DK);
    let back = consent(&auth, AuthorizeOptions::new(), acme).await;
    auth.oauth().unwrap().complete(&back).await.unwrap();
    clock.advance(ACCESS_TTL + Duration::from_secs(1));
    sandbox.advance_clock(ACCESS_TTL + Duration::from_secs(1));
    auth.token_manager()
        .unwrap()
        .access_token(&acme)
        .await
        .unwrap();

    eventually("both events delivered", || {
        received.lock().unwrap().requests.len() >= 3
    })
    .await;
    let requests = received.lock().unwrap().requests.clone();
    assert_eq!(
        requests.len(),
        3,
        "the first delivery failed once and was retried"
    );
    assert!(
        requests.iter().all(|(_, verified, _)| *verified),
        "every signature verifies"
    );
    assert_eq!(
        requests[0].0, requests[1].0,
        "a retry keeps its delivery id"
    );
    assert_ne!(requests[1].0, requests[2].0);
    assert_eq!(requests[1].2["event"], "connected");
    assert_eq!(requests[2].2["event"], "refreshed");
    assert_eq!(requests[2].2["subject"], acme.to_string());
    assert_eq!(requests[2].2["method"], "oauth");
    assert_eq!(requests[2].2["environment"], "sandbox");
    assert!(requests[2].2["at"].as_u64().is_some_and(|at| at > 0));
    let bodies = format!("{requests:?}");
    assert!(!bodies.contains(CANARY), "no secret in a delivery");

    // A signature made with another secret, or over another body, does not verify.
    let body = br#"{"event":"connected"}"#;
    let good = signature(SECRET, 1_700_000_000, body);
    assert!(verify(SECRET, 1_700_000_000, body, &good));
    assert!(!verify(b"another secret", 1_700_000_000, body, &good));
    assert!(!verify(SECRET, 1_700_000_001, body, &good));
    assert!(!verify(SECRET, 1_700_000_000, b"{}", &good));
    sandbox.shutdown().await;
}
