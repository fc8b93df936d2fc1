//! Serves pleo-auth's metrics (feature `metrics`) to Prometheus with
//! `metrics-exporter-prometheus`, on `GET /metrics`.
//!
//! ```sh
//! cargo run --example metrics_prometheus --features oauth,sandbox,metrics -- 127.0.0.1:9464
//! curl http://127.0.0.1:9464/metrics
//! ```
//!
//! It connects a company of an in-process sandbox and refreshes its grant a few times, so the
//! page has refreshes, store operations and leases to show. Without an address it prints the
//! page once and exits. The metric names, units and labels are listed in `pleo_auth::metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use pleo_auth::oauth::{AuthorizeOptions, OAuthConfig};
use pleo_auth::sandbox::{Sandbox, harness, seed};
use pleo_auth::{ClientSecret, Environment, ManualClock, MemoryStore, PleoAuth};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Install the exporter's recorder first, then describe the metrics (units, help texts).
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    pleo_auth::metrics::describe();

    let sandbox = Sandbox::builder()
        .auto_approve(Some(seed::ACME_DK))
        .start()
        .await?;
    let base = sandbox.base_url();
    let environment = Environment::custom("sandbox", base.as_str(), base.as_str())?;
    let clock = ManualClock::new();
    let auth = PleoAuth::builder()
        .environment(environment.clone())
        .store_from(MemoryStore::new())
        .clock(Arc::new(clock.clone()))
        .oauth(
            OAuthConfig::builder()
                .environment(environment)
                .client_id(seed::DEMO_CLIENT_ID)
                .client_secret(ClientSecret::new(seed::DEMO_CLIENT_SECRET))
                .redirect_uri(seed::DEMO_REDIRECT_URIS[0])
                .scopes("users:read")
                .build()?,
        )
        .build()?;
    let oauth = auth.oauth()?;
    let request = oauth.authorize(AuthorizeOptions::new()).await?;
    // The sandbox approves at once: its answer is the redirect back to the app.
    let callback = harness::follow_auto_approve(&harness::http(), &request.url).await;
    let connection = oauth.complete(callback.as_str()).await?;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(16 * 60));
        sandbox.advance_clock(Duration::from_secs(16 * 60));
        auth.token_manager()?
            .access_token(&connection.subject)
            .await?;
    }

    let Some(address) = std::env::args().nth(1) else {
        print!("{}", prometheus.render());
        return Ok(());
    };
    let app = Router::new().route("/metrics", get(move || async move { prometheus.render() }));
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("serving metrics on http://{address}/metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
