//! Property-based fuzzing (the CI counterpart of the cargo-fuzz targets in `fuzz/`) of every
//! parser that reads outside input: subject URNs, scope lists, store keys, stored records of each
//! type, `Retry-After`, OAuth callback queries (through `OAuthClient::complete`, which must
//! refuse garbage before any network call), token responses and `WWW-Authenticate` challenges
//! (served by a loopback listener that answers with the fuzzed bytes), and `Environment` URL
//! building from hostile API paths. Pass: no panic, bounded allocation (bodies are capped), typed
//! errors that never quote a secret, URLs that never leave the API base.

#![cfg(all(feature = "oauth", feature = "http"))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use pleo_auth_core::testing::{check_api_url, find_leak};
use pleo_auth_core::{
    ApiKeyCredential, Environment, ErrorKind as CoreKind, MemoryStore, OAuthGrant,
    PendingAuthorization, Record, ScopeSet, StoreKey, Subject, TenantLink,
};
use pleo_auth_http::transport::{DEFAULT_MAX_BODY_BYTES, parse_retry_after};
use pleo_auth_oauth::{AuthorizeOptions, ErrorKind, OAuthClient};
use proptest::prelude::*;
use support::*;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Strings that look like what the parsers expect, with hostile variations.
fn urnish() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,60}",
        "urn:pleo:(company|organisation|Company|org):[0-9a-fA-F-]{0,40}",
        "(urn:pleo:company:)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}.{0,3}",
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn subject_urns_parse_or_fail_typed(raw in urnish()) {
        match Subject::from_str(&raw) {
            Ok(subject) => {
                let shown = subject.to_string();
                prop_assert_eq!(Subject::from_str(&shown).unwrap(), subject);
            }
            Err(e) => prop_assert_eq!(e.kind(), CoreKind::InvalidInput),
        }
    }

    #[test]
    fn scope_lists_parse_or_fail_typed(raw in prop_oneof!["\\PC{0,80}", "([a-z-]{1,12}:(read|write) ?){0,6}"]) {
        match ScopeSet::from_str(&raw) {
            Ok(scopes) => {
                let shown = scopes.to_string();
                prop_assert_eq!(ScopeSet::from_str(&shown).unwrap(), scopes);
            }
            Err(e) => prop_assert_eq!(e.kind(), CoreKind::InvalidInput),
        }
    }

    /// Store keys are injective: hostile parts (`/`, `:`, `..`, `%2F`, NUL, long strings) never
    /// collide or escape their prefix.
    #[test]
    fn store_keys_are_injective(
        a in prop::collection::vec(prop_oneof!["\\PC{1,20}", "(/|:|\\.\\.|%2F|%|\\x00|\\+){1,4}", "L{150,260}"], 1..4),
        b in prop::collection::vec(prop_oneof!["\\PC{1,20}", "(/|:|\\.\\.|%2F|%|\\x00|\\+){1,4}", "L{150,260}"], 1..4),
    ) {
        let prefix = StoreKey::from_parts(["tenants"]).unwrap();
        let key = |parts: &Vec<String>| {
            let mut key = prefix.clone();
            for p in parts {
                key = key.child(p)?;
            }
            Ok::<_, pleo_auth_core::Error>(key)
        };
        match (key(&a), key(&b)) {
            (Ok(ka), Ok(kb)) => {
                prop_assert_eq!(ka == kb, a == b, "{:?} / {:?}", a, b);
                prop_assert!(ka.starts_with(&prefix) && ka != prefix);
                let mut parts = ka.parts();
                prop_assert_eq!(parts.remove(0), "tenants");
                prop_assert_eq!(&parts, &a);
                prop_assert!(!ka.as_str().contains(".."));
                prop_assert_eq!(StoreKey::parse(ka.as_str()).unwrap(), ka);
            }
            (Err(e), _) | (_, Err(e)) => prop_assert_eq!(e.kind(), CoreKind::InvalidInput),
        }
    }

    #[test]
    fn retry_after_is_bounded_and_never_panics(
        raw in prop_oneof![
            "\\PC{0,40}",
            "[0-9 ]{0,14}",
            "(Mon|Sun|Xyz), [0-9]{2} (Jan|Feb|Nov|Foo) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|UTC)",
        ],
        now_secs in 0u64..4_000_000_000,
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        if let Some(wait) = parse_retry_after(&raw, now) {
            let digits = raw.trim();
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                prop_assert_eq!(wait.as_secs(), digits.parse::<u64>().unwrap());
            } else {
                // An HTTP date: never further than the format can express.
                prop_assert!(wait < Duration::from_secs(10_000 * 366 * 86_400));
            }
        }
    }

    #[test]
    fn stored_records_decode_or_fail_closed(bytes in record_bytes()) {
        check_decode::<OAuthGrant>(&bytes)?;
        check_decode::<ApiKeyCredential>(&bytes)?;
        check_decode::<PendingAuthorization>(&bytes)?;
        check_decode::<TenantLink>(&bytes)?;
    }
}

/// A valid grant record (with canary secrets) to mutate.
fn grant_bytes() -> Vec<u8> {
    let json = format!(
        r#"{{"schema":1,"kind":"oauth_grant","environment":"sandbox","client_id":"c","subject":"urn:pleo:company:0c000000-0000-4000-8000-000000000001","status":"active","access_token":"{CANARY}-at","access_token_expires_at":1,"refresh_token":"{CANARY}-rt","scopes":"users:read","generation":1,"created_at":0,"updated_at":0}}"#
    );
    assert!(
        OAuthGrant::decode(json.as_bytes()).is_ok(),
        "the seed record is valid"
    );
    json.into_bytes()
}

fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = grant_bytes();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            Just(valid.clone())
        )
            .prop_map(|(edits, mut bytes)| {
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            }),
        (any::<prop::sample::Index>(), Just(valid.clone()))
            .prop_map(|(at, bytes)| bytes[..at.index(bytes.len())].to_vec()),
        (0u32..200, "[a-z_]{0,20}").prop_map(|(schema, kind)| {
            format!(r#"{{"schema":{schema},"kind":"{kind}","x":"{CANARY}-x"}}"#).into_bytes()
        }),
    ]
}

fn check_decode<R: Record>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(err) = R::decode(bytes) {
        prop_assert!(
            matches!(err.kind(), CoreKind::Corrupt | CoreKind::UnsupportedSchema),
            "{:?}",
            err
        );
        let shown = format!("{err} {err:?}");
        prop_assert_eq!(find_leak(&shown, &[CANARY]), None);
    }
    Ok(())
}

/// One sandbox and one client for the callback fuzzing.
struct CallbackRig {
    sandbox: pleo_auth_sandbox::SandboxHandle,
    client: OAuthClient,
}

fn callback_rig() -> &'static CallbackRig {
    static RIG: OnceLock<CallbackRig> = OnceLock::new();
    RIG.get_or_init(|| {
        runtime().block_on(async {
            let sandbox = start_sandbox(&SandboxSpec::default()).await;
            let environment = environment_at(sandbox.base_url().as_str());
            let client =
                OAuthClient::builder(config(&environment, 0), Arc::new(MemoryStore::new()))
                    .build()
                    .unwrap();
            // A real pending authorization exists, so a guessed state has something to miss.
            client.authorize(AuthorizeOptions::new()).await.unwrap();
            CallbackRig { sandbox, client }
        })
    })
}

fn query() -> impl Strategy<Value = String> {
    let param = prop_oneof![
        Just("code".to_owned()),
        Just("state".to_owned()),
        Just("error".to_owned()),
        Just("error_description".to_owned()),
        Just("iss".to_owned()),
        "[a-z_%]{0,8}",
    ];
    let value = prop_oneof![
        "[A-Za-z0-9_%+=&-]{0,24}",
        "\\PC{0,16}",
        Just(format!("{CANARY}-code"))
    ];
    prop_oneof![
        "\\PC{0,200}",
        prop::collection::vec((param, value), 0..7).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        }),
        "https?://[a-z.]{0,10}/cb\\?[ -~]{0,60}",
        "[a-z=&]{8000,8300}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Garbage callback queries are refused before any token request: the sandbox counts none.
    #[test]
    fn callback_queries_are_refused_before_any_token_request(raw in query()) {
        let rig = callback_rig();
        let result = runtime().block_on(rig.client.complete(&raw));
        let err = result.expect_err("a made-up callback never connects");
        prop_assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidCallback
                    | ErrorKind::IssuerMismatch
                    | ErrorKind::UnknownState
                    | ErrorKind::AccessDenied { .. }
                    | ErrorKind::AuthorizationError { .. }
            ),
            "{:?}",
            err
        );
        let shown = format!("{err} {err:?}");
        prop_assert_eq!(find_leak(&shown, &[CANARY]), None);
        prop_assert_eq!(rig.sandbox.stats().token_requests_for("authorization_code"), 0);
        prop_assert_eq!(rig.sandbox.stats().endpoint_hits.len(), 0);
    }
}

/// What the fuzzed token endpoint answers next.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    challenge: String,
}

/// A loopback server that answers `/oauth/token` and the API with the current fuzzed answer.
struct FuzzServer {
    environment: pleo_auth_core::Environment,
    /// Tests that set the answer take turns.
    turn: Mutex<()>,
    answer: Arc<Mutex<Answer>>,
    _task: tokio::task::JoinHandle<()>,
}

fn fuzz_server() -> &'static FuzzServer {
    static SERVER: OnceLock<FuzzServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        runtime().block_on(async {
            let answer = Arc::new(Mutex::new(Answer {
                status: 200,
                content_type: "application/json",
                body: Vec::new(),
                challenge: String::new(),
            }));
            let shared = answer.clone();
            let app = axum::Router::new().fallback(move || {
                let current = shared.lock().unwrap().clone();
                async move {
                    let mut response =
                        axum::response::Response::new(axum::body::Body::from(current.body));
                    *response.status_mut() = axum::http::StatusCode::from_u16(current.status)
                        .unwrap_or(axum::http::StatusCode::OK);
                    let headers = response.headers_mut();
                    headers.insert("content-type", current.content_type.parse().unwrap());
                    if let Ok(value) = current.challenge.parse() {
                        headers.insert("www-authenticate", value);
                    }
                    headers.insert("retry-after", "1".parse().unwrap());
                    response
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = base_url(listener.local_addr().unwrap());
            let task = tokio::spawn(async move {
                axum::serve(listener, app).await.ok();
            });
            FuzzServer {
                environment: environment_at(&base),
                turn: Mutex::new(()),
                answer,
                _task: task,
            }
        })
    })
}

fn token_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just(format!(r#""access_token":"{CANARY}-at""#)),
        Just(format!(r#""refresh_token":"{CANARY}-rt""#)),
        Just(r#""access_token":"""#.to_owned()),
        Just(r#""access_token":17"#.to_owned()),
        "\"expires_in\":(-?[0-9]{1,22}|\"[0-9]{1,3}\"|null|1e400)",
        "\"token_type\":\"(bearer|Bearer|mac|[a-z]{0,5})\"",
        "\"scope\":\"[a-z: -]{0,30}\"",
        "\"error\":\"(invalid_grant|invalid_client|temporarily_unavailable|[a-z_]{0,12})\"",
        "\"[a-z]{1,6}\":\\[\\{\\}\\]",
    ];
    prop_oneof![
        prop::collection::vec(field, 0..7)
            .prop_map(|fields| format!("{{{}}}", fields.join(",")).into_bytes()),
        prop::collection::vec(any::<u8>(), 0..200),
        (0usize..4).prop_map(|n| format!("{}{CANARY}", "[".repeat(n * 200)).into_bytes()),
        Just(vec![b' '; DEFAULT_MAX_BODY_BYTES + 1]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Fuzzed token responses (status, content type, body) to a real code exchange: a typed
    /// error that quotes nothing, or (for a well-formed answer) a failure at the introspection
    /// step that follows; never a panic, never a stored grant.
    #[test]
    fn token_responses_never_panic_and_fail_typed(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(429), Just(500), Just(503), 100u16..600],
        json in any::<bool>(),
        body in token_body(),
    ) {
        let server = fuzz_server();
        let _turn = server.turn.lock().unwrap_or_else(|e| e.into_inner());
        *server.answer.lock().unwrap() = Answer {
            status,
            content_type: if json { "application/json" } else { "text/html" },
            body,
            challenge: String::new(),
        };
        let store = Arc::new(MemoryStore::new());
        let client = OAuthClient::builder(config(&server.environment, 0), store.clone())
            .build()
            .unwrap();
        let result = runtime().block_on(async {
            let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
            let query = format!("code={CANARY}-code&state={}", request.state.expose_secret());
            client.complete(&query).await
        });
        let err = result.expect_err("a fuzzed answer never connects a grant");
        let shown = format!("{err} {err:?}");
        prop_assert_eq!(find_leak(&shown, &[CANARY]), None);
        let listed = runtime().block_on(client.token_manager().list()).unwrap();
        prop_assert!(listed.is_empty(), "nothing stored");
    }

    /// Fuzzed `WWW-Authenticate` challenges on a 403: a typed permission error.
    #[test]
    fn challenges_never_panic(challenge in prop_oneof![
        "\\PC{0,80}",
        "Bearer( [a-z_]{0,8}=(\"[^\"]{0,20}\"?|[a-z:]{0,10}),?){0,4}",
    ]) {
        let server = fuzz_server();
        let _turn = server.turn.lock().unwrap_or_else(|e| e.into_inner());
        *server.answer.lock().unwrap() = Answer {
            status: 403,
            content_type: "application/json",
            body: br#"{"message":"no"}"#.to_vec(),
            challenge,
        };
        let result = runtime().block_on(async {
            let response = reqwest::get(server.environment.api_url("/v1/x").unwrap()).await.unwrap();
            pleo_auth_http::error_for_status(response).await
        });
        let err = result.expect_err("403 is an error");
        prop_assert_eq!(err.kind(), CoreKind::PermissionDenied);
    }
}

#[test]
fn hostile_key_parts_stay_distinct() {
    // A sanity anchor for the injectivity property above: the encoded forms of a few
    // hostile parts are pairwise different.
    let parts = ["a/b", "a%2Fb", "a:b", "a\0b", "..", "%", "+"];
    let keys: HashSet<StoreKey> = parts
        .iter()
        .map(|p| StoreKey::from_parts(["x", p]).unwrap())
        .collect();
    assert_eq!(keys.len(), parts.len());
}

/// API paths assembled from the pieces that confuse URL parsers (backslashes, encoded dots and
/// slashes, authorities, schemes, control characters), plain segments and arbitrary bytes.
fn api_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "/",
            "\\",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%5C",
            "%",
            "%00",
            "?",
            "#",
            "@",
            ":",
            "h:99999",
            "//evil.example",
            "https://evil.example",
            "v1",
            "introspect",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9._~-]{1,8}",
        "\\PC{1,4}",
        any::<char>().prop_map(String::from),
        (0u8..0x20).prop_map(|b| char::from(b).to_string()),
    ];
    prop_oneof![
        prop::collection::vec(piece, 0..12).prop_map(|p| p.concat()),
        prop::collection::vec("[a-zA-Z0-9._~:@!$&'()*+,;=-]{1,10}|%[0-9a-fA-F]{2}", 1..6)
            .prop_map(|p| format!("/{}", p.join("/"))),
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn api_environments() -> [Environment; 2] {
    [
        Environment::staging(),
        Environment::custom("sandbox", "http://127.0.0.1:9", "http://127.0.0.1:9/api/v").unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// `Environment::api_url` never panics; what it builds stays on the API host, under the base
    /// path, exactly as asked; what it refuses is `InvalidInput`.
    #[test]
    fn api_urls_never_panic_and_never_leave_the_base(path in api_path()) {
        for env in api_environments() {
            check_api_url(&env, &path).map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn api_path_generator_reaches_accepted_and_refused_paths() {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let [env, _] = api_environments();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..2000 {
        let path = api_path().new_tree(&mut runner).unwrap().current();
        match check_api_url(&env, &path).unwrap() {
            Some(_) => accepted += 1,
            None => refused += 1,
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}
