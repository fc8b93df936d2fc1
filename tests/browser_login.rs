//! `pleo-auth login` driven end to end by a real browser: headless Chromium, controlled over
//! WebDriver (chromedriver), on the sandbox's consent page.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). The test fails,
//! never skips, when they are missing.
#![cfg(feature = "cli")]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Cli, sandbox};
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::process::{Child, Command};

const ACME_SE: &str = "0c000000-0000-4000-8000-000000000002";

/// Finds `program` in `PATH`.
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{program} is not installed: apt-get install chromium chromium-driver")
        })
}

/// A chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(which("chromedriver"))
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(answer) = reqwest::get(format!("{url}/status")).await
                && answer.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { _child: child, url }
    }

    /// A headless Chromium session with its own profile directory.
    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": which("chromium"),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session starts")
    }
}

/// Waits until the browser shows a page under `prefix` and returns its heading.
async fn heading_under(browser: &Client, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = browser.current_url().await.expect("current URL");
        if url.as_str().starts_with(prefix) {
            break;
        }
        assert!(Instant::now() < deadline, "the browser stayed on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .find(Locator::Css("h1"))
        .await
        .expect("the page has a heading")
        .text()
        .await
        .expect("heading text")
}

/// The loopback redirect URI in an authorization URL.
fn redirect_uri(url: &url::Url) -> String {
    url.query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .expect("the URL carries a redirect_uri")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_allows_in_chromium_and_the_cli_stores_the_grant() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;

    let login = cli.start_login(&["--tenant", "acme-se"]).await;
    let callback = redirect_uri(&login.url);
    browser
        .goto(login.url.as_str())
        .await
        .expect("open the URL");
    let title = browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        title.contains("Pleo Auth Demo"),
        "the consent page names the client: {title}"
    );
    browser
        .find(Locator::Css("select#subject"))
        .await
        .expect("a company selector")
        .select_by_value(&format!("urn:pleo:company:{ACME_SE}"))
        .await
        .expect("choose Acme Sweden");
    browser
        .find(Locator::Css("button[value=allow]"))
        .await
        .expect("an Allow button")
        .click()
        .await
        .expect("click Allow");
    let heading = heading_under(&browser, &callback).await;
    assert_eq!(heading, "Authorization received");

    let done = login.finish().await;
    done.ok().no_secret();
    assert!(
        done.stdout
            .contains(&format!("Connected company {ACME_SE} in sandbox")),
        "{}",
        done.stdout
    );
    let status = cli.run(&["status", "--json"]).await;
    status.ok().no_secret();
    let listed = status.json();
    let entry = &listed.as_array().unwrap()[0];
    assert_eq!(entry["company"], ACME_SE);
    assert_eq!(entry["tenant"], "acme-se");
    assert_eq!(entry["state"], "active");
    assert_eq!(entry["method"], "oauth");
    browser.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_denies_in_chromium_and_the_cli_reports_access_denied() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;

    let login = cli.start_login(&[]).await;
    let callback = redirect_uri(&login.url);
    browser
        .goto(login.url.as_str())
        .await
        .expect("open the URL");
    browser
        .find(Locator::Css("button[value=deny]"))
        .await
        .expect("a Deny button")
        .click()
        .await
        .expect("click Deny");
    let heading = heading_under(&browser, &callback).await;
    assert_ne!(heading, "Authorization received");

    let done = login.finish().await;
    done.expect_code(6).no_secret();
    assert!(done.stderr.contains("access denied"), "{}", done.stderr);
    let status = cli.run(&["status", "--json"]).await;
    assert_eq!(status.ok().json(), serde_json::json!([]));
    browser.close().await.expect("close the browser");
}
