//! The connect routes and the operator view in a real browser: headless Chromium signs in to a
//! stand-in app, connects a company through the sandbox's consent (the flow cookie travels as
//! a browser sends it), comes back to the app, and an admin sees the connection on the admin
//! page, which is saved as a screenshot.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). The test fails,
//! never skips, when they are missing.
#![cfg(all(feature = "axum", feature = "sandbox", feature = "apikey"))]

mod chromium_support;
mod web_support;

use std::time::{Duration, Instant};

use chromium_support::Driver;
use fantoccini::{Client, Locator};
use pleo_auth::MemoryStore;
use pleo_auth::sandbox::seed;
use web_support::*;

/// Waits until the browser is at a URL starting with `prefix`; returns it.
async fn arrives_at(browser: &Client, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = browser.current_url().await.expect("current URL");
        if url.as_str().starts_with(prefix) {
            return url.to_string();
        }
        assert!(Instant::now() < deadline, "the browser stayed on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} on the page: {e}"))
        .text()
        .await
        .unwrap()
}

/// The width and height in a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    (width, height)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_connects_a_tenant_and_an_admin_sees_it() {
    let (_sandbox, environment) = sandbox(Some(seed::ACME_DK)).await;
    let app = WebApp::start(&environment, arc(MemoryStore::new()), false).await;
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;
    browser.set_window_size(1400, 700).await.unwrap();

    // Connect: sign in as the tenant, open /connect, come back to the app's settings page.
    browser
        .goto(&format!("{}/login?as=erp-4711", app.url))
        .await
        .unwrap();
    browser.goto(&format!("{}/connect", app.url)).await.unwrap();
    let back = arrives_at(&browser, &format!("{}/settings", app.url)).await;
    assert!(back.ends_with("/settings?pleo_connect=connected"), "{back}");
    let connections = app.auth.connections().await.unwrap();
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0].tenant.as_ref().unwrap().as_str(), "erp-4711");

    // A tenant user is kept out of the admin page.
    browser.goto(&format!("{}/admin", app.url)).await.unwrap();
    assert_eq!(text(&browser, "h1").await, "Not allowed");

    // An admin sees the connection.
    browser
        .goto(&format!("{}/login?as=ops&admin=1", app.url))
        .await
        .unwrap();
    browser.goto(&format!("{}/admin", app.url)).await.unwrap();
    assert_eq!(text(&browser, "h1").await, "Pleo connections");
    assert_eq!(text(&browser, "#connected").await, "1");
    assert_eq!(text(&browser, "#reauthorization").await, "0");
    let row = text(&browser, "tbody tr").await;
    for expected in [
        "erp-4711",
        &seed::ACME_DK.to_string(),
        "sandbox",
        "oauth",
        "active",
    ] {
        assert!(row.contains(expected), "{expected} in {row:?}");
    }
    assert!(!browser.source().await.unwrap().contains(CANARY));

    let png = browser.screenshot().await.expect("a screenshot");
    let (width, height) = png_size(&png);
    assert!(width >= 400 && height >= 300, "{width}x{height}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-view.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot of the admin page: {}", path.display());
    browser.close().await.expect("close the browser");
}
