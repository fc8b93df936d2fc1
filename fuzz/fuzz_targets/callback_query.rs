//! OAuth callback queries through `OAuthClient::complete`: garbage is refused before any
//! network call (the token endpoint is a closed port, so a request would fail as
//! `Unavailable`, which never happens here).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pleo_auth_core::testing::find_leak;
use pleo_auth_core::{ClientSecret, Environment, MemoryStore};
use pleo_auth_oauth::{AuthorizeOptions, ErrorKind, OAuthClient, OAuthConfig};

struct Rig {
    runtime: tokio::runtime::Runtime,
    client: OAuthClient,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let environment =
            Environment::custom("fuzz", "http://127.0.0.1:9/", "http://127.0.0.1:9/").unwrap();
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
        runtime
            .block_on(client.authorize(AuthorizeOptions::new()))
            .unwrap();
        Rig { runtime, client }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let rig = rig();
    let err = rig
        .runtime
        .block_on(rig.client.complete(&text))
        .expect_err("a made-up callback never connects");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidCallback
                | ErrorKind::UnknownState
                | ErrorKind::AccessDenied { .. }
                | ErrorKind::AuthorizationError { .. }
        ),
        "{err:?}"
    );
    assert_eq!(find_leak(&format!("{err} {err:?}"), &["CANARY"]), None);
});
