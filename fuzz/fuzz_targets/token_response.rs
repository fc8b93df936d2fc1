//! Token responses: a loopback server answers the code exchange (and everything after it) with
//! the fuzzed status, content type and body (bodies above the cap included). Pass: never a
//! panic, and an error quotes nothing of the body.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pleo_auth_core::testing::find_leak;
use pleo_auth_core::{ClientSecret, Environment, MemoryStore};
use pleo_auth_oauth::{AuthorizeOptions, OAuthClient, OAuthConfig};

struct Rig {
    runtime: tokio::runtime::Runtime,
    answer: Arc<Mutex<(u16, &'static str, Vec<u8>)>>,
    client: OAuthClient,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let answer = Arc::new(Mutex::new((200u16, "application/json", Vec::new())));
        let shared = answer.clone();
        let base = runtime.block_on(async move {
            let app = axum::Router::new().fallback(move || {
                let (status, content_type, body) = shared.lock().unwrap().clone();
                async move {
                    let mut response = axum::response::Response::new(axum::body::Body::from(body));
                    *response.status_mut() = axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::OK);
                    response
                        .headers_mut()
                        .insert("content-type", content_type.parse().unwrap());
                    response
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}/", listener.local_addr().unwrap());
            tokio::spawn(async move {
                axum::serve(listener, app).await.ok();
            });
            base
        });
        let environment = Environment::custom("fuzz", &base, &base).unwrap();
        let config = OAuthConfig::builder()
            .environment(environment)
            .client_id("fuzz")
            .client_secret(ClientSecret::new("CANARY-secret"))
            .redirect_uri("http://127.0.0.1/callback")
            .scopes("users:read")
            .build()
            .unwrap();
        let client = OAuthClient::builder(config, Arc::new(MemoryStore::new()))
            .build()
            .unwrap();
        Rig {
            runtime,
            answer,
            client,
        }
    })
}

const STATUSES: [u16; 8] = [200, 200, 200, 400, 401, 429, 500, 503];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let rig = rig();
    let status = STATUSES[usize::from(selector & 7)];
    let content_type = if selector & 8 == 0 {
        "application/json"
    } else {
        "text/plain"
    };
    // Large bodies: the high bit repeats the input past the 256 KiB cap.
    let body = if selector & 0x80 != 0 {
        body.repeat(300 * 1024 / body.len().max(1) + 1)
    } else {
        body.to_vec()
    };
    *rig.answer.lock().unwrap() = (status, content_type, body);
    let result = rig.runtime.block_on(async {
        let request = rig.client.authorize(AuthorizeOptions::new()).await.unwrap();
        let query = format!("code=CANARY-code&state={}", request.state.expose_secret());
        rig.client.complete(&query).await
    });
    if let Err(err) = result {
        assert_eq!(find_leak(&format!("{err} {err:?}"), &["CANARY"]), None);
    }
});
