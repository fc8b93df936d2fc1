//! Posts every credential event ([`PleoEvent`]) as JSON to a webhook URL, signed with
//! HMAC-SHA256, retrying failed deliveries with backoff.
//!
//! Each delivery is one `POST` with the event as its JSON body and these headers:
//!
//! - `X-Pleo-Auth-Delivery`: an id that stays the same across the retries of one event, so the
//!   receiver can drop duplicates;
//! - `X-Pleo-Auth-Timestamp`: Unix seconds when the delivery was signed;
//! - `X-Pleo-Auth-Signature`: `sha256=` and the hex HMAC-SHA256, keyed with the shared secret,
//!   of `{timestamp}.{body}`. The receiver recomputes it (in constant time) and refuses old
//!   timestamps.
//!
//! A delivery that fails (no answer, 429 or 5xx) is retried up to five times with exponential
//! backoff; events wait in a bounded queue, so a slow receiver never holds up refreshes.
//!
//! ```sh
//! PLEO_WEBHOOK_URL=https://alerts.example/pleo PLEO_WEBHOOK_SECRET=... \
//!   cargo run --example webhook_events --features oauth,sandbox
//! ```
//!
//! Run as is, it connects a company of an in-process sandbox and refreshes its grant, so the
//! receiver gets `connected` and `refreshed`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use pleo_auth::oauth::{AuthorizeOptions, OAuthConfig};
use pleo_auth::sandbox::{Sandbox, harness, seed};
use pleo_auth::{ClientSecret, Environment, ManualClock, MemoryStore, PleoAuth, PleoEvent};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Deliveries tried per event.
pub const ATTEMPTS: u32 = 5;

/// Events waiting for delivery before new ones are dropped.
pub const QUEUE: usize = 1024;

/// Posts events to one URL.
pub struct Webhook {
    queue: mpsc::Sender<PleoEvent>,
}

impl Webhook {
    /// Starts the delivery task for `url`, signing with `secret`; `first_backoff` doubles after
    /// each failed attempt.
    pub fn start(url: String, secret: Vec<u8>, first_backoff: Duration) -> (Self, JoinHandle<()>) {
        let (queue, mut events) = mpsc::channel::<PleoEvent>(QUEUE);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client");
        let task = tokio::spawn(async move {
            let mut delivery = 0u64;
            while let Some(event) = events.recv().await {
                delivery += 1;
                let id = format!("{}-{delivery}", std::process::id());
                deliver(&http, &url, &secret, &id, &event, first_backoff).await;
            }
        });
        (Self { queue }, task)
    }

    /// The sink for [`PleoAuthBuilder::on_event`](pleo_auth::PleoAuthBuilder::on_event): queues
    /// the event and returns at once (a full queue drops it).
    pub fn sink(&self) -> impl Fn(&PleoEvent) + Send + Sync + 'static {
        let queue = self.queue.clone();
        move |event: &PleoEvent| {
            if queue.try_send(event.clone()).is_err() {
                eprintln!("webhook queue full; an event was dropped");
            }
        }
    }
}

/// The signature header's value for `body` signed at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is the signature of `body` at `timestamp`, compared in constant time.
pub fn verify(secret: &[u8], timestamp: u64, body: &[u8], header: &str) -> bool {
    let Some(hex_mac) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

async fn deliver(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    id: &str,
    event: &PleoEvent,
    first_backoff: Duration,
) {
    let body = serde_json::to_vec(event).expect("an event serializes");
    let mut backoff = first_backoff;
    for attempt in 1..=ATTEMPTS {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-pleo-auth-delivery", id)
            .header("x-pleo-auth-timestamp", timestamp.to_string())
            .header("x-pleo-auth-signature", signature(secret, timestamp, &body))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response)
                if response.status().is_client_error() && response.status().as_u16() != 429 =>
            {
                eprintln!("webhook refused delivery {id}: {}", response.status());
                return;
            }
            Ok(response) => eprintln!(
                "webhook delivery {id} attempt {attempt}: {}",
                response.status()
            ),
            Err(e) => eprintln!("webhook delivery {id} attempt {attempt}: {e}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    eprintln!("webhook delivery {id} given up after {ATTEMPTS} attempts");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("PLEO_WEBHOOK_URL")?;
    let secret = std::env::var("PLEO_WEBHOOK_SECRET")?.into_bytes();
    let (webhook, delivery) = Webhook::start(url, secret, Duration::from_millis(500));

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
        .on_event(webhook.sink())
        .build()?;

    let oauth = auth.oauth()?;
    let request = oauth.authorize(AuthorizeOptions::new()).await?;
    // The sandbox approves at once: its answer is the redirect back to the app.
    let callback = harness::follow_auto_approve(&harness::http(), &request.url).await;
    let connection = oauth.complete(callback.as_str()).await?;
    let expiry = Duration::from_secs(16 * 60);
    clock.advance(expiry);
    sandbox.advance_clock(expiry);
    auth.token_manager()?
        .access_token(&connection.subject)
        .await?;

    // Let the delivery task post what is queued, then stop.
    drop(auth);
    drop(webhook);
    tokio::time::timeout(Duration::from_secs(60), delivery).await??;
    Ok(())
}
