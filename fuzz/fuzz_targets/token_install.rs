//! Install before judging: token-response bytes through the refresh manager to the store.
//!
//! Each run stores a grant whose access token has expired, and a loopback server answers the
//! manager's refresh with the fuzzed status, content type and body. Pass: no panic; an error
//! quotes nothing of the body; and whenever the body is a JSON object with a usable
//! `refresh_token` member, the stored grant holds exactly that refresh token afterwards,
//! whatever else the body got wrong (a server that answered has already rotated, so dropping
//! that token would burn the grant).
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pleo_auth_core::testing::find_leak;
use pleo_auth_core::{
    AccessToken, ClientSecret, CredentialKey, CredentialStatus, DynSecretStore, Environment,
    MemoryStore, OAuthGrant, Precondition, RecordStoreExt, RefreshToken, Subject, Timestamp,
    layout,
};
use pleo_auth_oauth::{OAuthClient, OAuthConfig};

type Answer = (u16, Option<&'static str>, Vec<u8>);

struct Rig {
    runtime: tokio::runtime::Runtime,
    answer: Arc<Mutex<Answer>>,
    environment: Environment,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let answer: Arc<Mutex<Answer>> = Arc::new(Mutex::new((200, None, Vec::new())));
        let shared = answer.clone();
        let base = runtime.block_on(async move {
            let app = axum::Router::new().fallback(move || {
                let (status, content_type, body) = shared.lock().unwrap().clone();
                async move {
                    let mut response = axum::response::Response::new(axum::body::Body::from(body));
                    *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                    if let Some(content_type) = content_type {
                        response
                            .headers_mut()
                            .insert("content-type", content_type.parse().unwrap());
                    }
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
        Rig {
            runtime,
            answer,
            environment,
        }
    })
}

const STATUSES: [u16; 4] = [200, 200, 201, 203];

/// The refresh token the body hands over, as the client must read it: a non-empty string
/// member of a JSON object, at most 16 KiB.
fn handed_over(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(body).ok()? {
        serde_json::Value::Object(fields) => match fields.get("refresh_token") {
            Some(serde_json::Value::String(token))
                if !token.is_empty() && token.len() <= 16 * 1024 =>
            {
                Some(token.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let rig = rig();
    let status = STATUSES[usize::from(selector & 3)];
    let content_type = (selector & 4 == 0).then_some("application/json");
    *rig.answer.lock().unwrap() = (status, content_type, body.to_vec());
    rig.runtime.block_on(async {
        let store: DynSecretStore = Arc::new(MemoryStore::new());
        let config = OAuthConfig::builder()
            .environment(rig.environment.clone())
            .client_id("fuzz")
            .client_secret(ClientSecret::new("CANARY-secret"))
            .redirect_uri("http://127.0.0.1/callback")
            .scopes("users:read")
            .build()
            .unwrap();
        let subject: Subject = "urn:pleo:company:0c000000-0000-4000-8000-000000000001"
            .parse()
            .unwrap();
        let key = layout::oauth_grant(&CredentialKey::new(
            rig.environment.name().clone(),
            config.client_id().clone(),
            subject,
        ));
        let grant = OAuthGrant {
            environment: rig.environment.name().clone(),
            client_id: config.client_id().clone(),
            subject,
            tenant: None,
            status: CredentialStatus::Active,
            status_reason: None,
            access_token: Some(AccessToken::new("CANARY-old-access")),
            access_token_expires_at: Some(Timestamp::from_millis(0)),
            refresh_token: Some(RefreshToken::new("CANARY-old-refresh")),
            refresh_token_issued_at: Some(Timestamp::from_millis(0)),
            scopes: "users:read".parse().unwrap(),
            generation: 1,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            settings: BTreeMap::new(),
        };
        store
            .put_record(&key, &grant, Precondition::Absent)
            .await
            .unwrap();
        let client = OAuthClient::builder(config, store.clone()).build().unwrap();
        let result = client.token_manager().access_token(&subject).await;
        if let Err(err) = &result {
            assert_eq!(find_leak(&format!("{err} {err:?}"), &["CANARY"]), None);
        }
        let (stored, _) = store
            .get_record::<OAuthGrant>(&key)
            .await
            .unwrap()
            .expect("the grant is still stored");
        if let Some(token) = handed_over(body) {
            assert_eq!(
                stored.refresh_token.as_ref().map(|t| t.expose_secret()),
                Some(token.as_str()),
                "the refresh token the server handed over is stored"
            );
        }
    });
});
