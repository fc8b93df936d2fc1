//! Delivery of the event stream: a subscriber that is stuck never holds up refreshes; the
//! queue is bounded, later events are dropped and counted, and a broadcast receiver that falls
//! behind learns how many it missed. (Apart from `events_metrics.rs`, whose metrics recorder is
//! global to its test binary.)
#![cfg(all(feature = "oauth", feature = "sandbox"))]

mod events_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use events_support::{ACCESS_TTL, auth_builder, company, consent, eventually, start_sandbox};
use pleo_auth::oauth::AuthorizeOptions;
use pleo_auth::sandbox::seed;
use pleo_auth::{ManualClock, MemoryStore, PleoEvent};

/// A subscriber that blocks never holds up refreshes: the queue is bounded, later events are
/// dropped and counted, and a broadcast receiver that falls behind learns how many it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_never_holds_up_refreshes() {
    let (sandbox, environment) = start_sandbox().await;
    let clock = ManualClock::new();
    let released = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicUsize::new(0));
    let auth = auth_builder(&environment, &clock, Arc::new(MemoryStore::new()))
        .event_capacity(4)
        .on_event({
            let released = released.clone();
            // Stuck until the test lets go.
            move |_: &PleoEvent| {
                while !released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .on_event({
            let delivered = delivered.clone();
            move |_: &PleoEvent| {
                delivered.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let mut lagging = auth.subscribe();
    let acme = company(seed::ACME_DK);
    let back = consent(&auth, AuthorizeOptions::new(), acme).await;
    auth.oauth().unwrap().complete(&back).await.unwrap();
    let manager = auth.token_manager().unwrap();
    for _ in 0..20 {
        clock.advance(ACCESS_TTL + Duration::from_secs(1));
        sandbox.advance_clock(ACCESS_TTL + Duration::from_secs(1));
        manager.access_token(&acme).await.unwrap();
    }
    assert_eq!(sandbox.stats().refreshes, 20, "every refresh went through");
    // The first event (connected) is stuck in the subscriber, four wait in the queue, and the
    // other sixteen are dropped and counted.
    assert_eq!(auth.events_lagged(), 16);
    assert_eq!(delivered.load(Ordering::SeqCst), 0);
    released.store(true, Ordering::SeqCst);
    eventually("the queue is delivered", || {
        delivered.load(Ordering::SeqCst) == 5
    })
    .await;
    // Five events went through a broadcast buffer of four: the receiver missed one.
    match lagging.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => assert_eq!(missed, 1),
        other => panic!("expected a lag, got {other:?}"),
    }
    sandbox.shutdown().await;
}
