//! The cache hit path takes no lock, does no I/O and allocates nothing beyond an `Arc` clone
//! (which does not allocate). Checked with a counting global allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use common::*;
use pleo_auth_oauth::AuthorizeOptions;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a thread-local `Cell` with a const
// initialiser, so counting neither allocates nor recurses.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Polls a future once; the hit path must complete without waiting.
fn poll_once<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the cache hit path must not wait"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_allocates_nothing_and_never_waits() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let subject = dk();
    let first = h.manager.access_token(&subject).await.unwrap();

    // Warm up thread-local state (arc-swap's debt slots) on this thread.
    for _ in 0..10 {
        drop(poll_once(h.manager.access_token(&subject)).unwrap());
    }
    const CALLS: u32 = 100_000;
    let before = allocations();
    let started = Instant::now();
    for _ in 0..CALLS {
        let token = poll_once(h.manager.access_token(&subject)).unwrap();
        assert_eq!(token.generation(), first.generation());
    }
    let elapsed = started.elapsed();
    assert_eq!(allocations() - before, 0, "the hit path allocated");
    assert_eq!(h.sandbox.stats().token_requests_for("refresh_token"), 0);
    eprintln!(
        "cache hit: {:?} per call over {CALLS} calls (unoptimised test build)",
        elapsed / CALLS
    );
}
