//! Isolation: nobody gets in where they don't belong.
//! - 50 companies x 4 grants (4 OAuth clients), 10,000 interleaved requests with random refresh
//!   timing, early revocations (401 and refresh) and cancellation: the sandbox never sees a
//!   request whose credential belongs to another company than the request names;
//! - a credential is refused for another company, another environment, and over plain http to a
//!   non-loopback host; nothing is sent;
//! - token, introspection, refresh and API requests never follow a redirect, so no credential
//!   or body reaches a second listener.

#![cfg(all(feature = "oauth", feature = "http"))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pleo_auth_core::{
    CompanyId, Credential, CredentialId, CredentialProvider, Environment, EnvironmentName,
    ErrorKind, InProcessLease, ManualClock, MemoryStore, Subject,
};
use pleo_auth_http::{PleoClient, RetryPolicy};
use pleo_auth_oauth::{AuthorizeOptions, OAuthClient, TokenManager};
use support::*;

const COMPANIES: usize = 50;
const CLIENTS: usize = 4;
const REQUESTS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_interleaved_requests_never_carry_another_companys_credential() {
    let spec = SandboxSpec {
        clients: CLIENTS,
        companies: COMPANIES,
        ..SandboxSpec::default()
    };
    // The refresh lease runs on real time: the test moves the manual clock by up to two
    // minutes at once while refreshes are in flight, which would expire every lease under
    // their holders (and fencing would then rightly refuse to present the refresh token).
    let h = Harness::with_lease(
        spec,
        Arc::new(MemoryStore::new()),
        ManualClock::new(),
        Arc::new(InProcessLease::new()),
    )
    .await;
    let clients: Vec<OAuthClient> = (0..CLIENTS)
        .map(|i| h.replica_with(i, fast_policy()))
        .collect();
    for c in 0..COMPANIES {
        for client in &clients {
            h.connect(client, company(company_uuid(c))).await;
        }
        // Stagger the grants' expiries.
        h.advance(Duration::from_secs(7));
    }
    let managers: Vec<TokenManager> = clients.iter().map(|c| c.token_manager()).collect();
    let apis: Vec<PleoClient> = managers
        .iter()
        .map(|m| {
            PleoClient::builder(h.environment.clone(), Arc::new(m.clone()))
                .retry_policy(RetryPolicy::default().with_base_backoff(Duration::from_millis(5)))
                .build()
                .unwrap()
        })
        .collect();
    h.sandbox.take_request_log();

    let mut rng = Rng::from_env("isolation");
    let started = Instant::now();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cancelled = Arc::new(AtomicU64::new(0));
    let mut checked = 0u64;
    let mut mismatches = 0u64;
    let mut rejected = 0u64;
    let mut sent = 0u64;
    while sent < REQUESTS {
        // Now and then Pleo revokes a grant's access token early: the wave's requests with it get
        // a 401 and one refresh replaces it. This happens between waves: a request whose token
        // is superseded by a refresh (below) and whose replacement is then revoked too meets two
        // independent rejections, and a call presents at most one replacement (pleo-auth-http:
        // a 401 is an error, never a loop).
        if rng.percent(30) {
            let client = rng.below(CLIENTS as u64) as usize;
            let subject = company(company_uuid(rng.below(COMPANIES as u64) as usize));
            if let Ok(token) = managers[client].access_token(&subject).await {
                h.sandbox
                    .revoke_access_tokens(token.access_token().expose_secret());
            }
        }
        // A wave of concurrent requests for random (client, company) pairs.
        let mut wave = Vec::new();
        for _ in 0..100 {
            let api = apis[rng.below(CLIENTS as u64) as usize].clone();
            let target = CompanyId::from_uuid(company_uuid(rng.below(COMPANIES as u64) as usize));
            let cancel = rng
                .percent(5)
                .then(|| Duration::from_micros(rng.below(3000)));
            let (ok, failed, cancelled) = (ok.clone(), failed.clone(), cancelled.clone());
            wave.push(tokio::spawn(async move {
                let call = api.get("/v1/export-jobs").company(target).send();
                let result = match cancel {
                    Some(after) => match tokio::time::timeout(after, call).await {
                        Ok(result) => result,
                        Err(_) => {
                            cancelled.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    },
                    None => call.await,
                };
                match result {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }));
            sent += 1;
        }
        // Random refresh timing: time moves on by up to two minutes while the wave is in flight,
        // so requests holding a token meet refreshes that supersede it.
        h.advance(Duration::from_secs(rng.below(120)));
        for task in wave {
            task.await.unwrap();
        }
        for record in h.sandbox.take_request_log() {
            checked += 1;
            rejected += u64::from(record.status == 401);
            if record.credential_id.is_none() {
                continue;
            }
            let named = record
                .company_id
                .as_deref()
                .and_then(|c| uuid::Uuid::parse_str(c).ok());
            let same = named.is_some_and(|c| {
                record.covered_companies == vec![c]
                    && record.subject_urn.as_deref() == Some(&company(c).to_string())
            });
            if !same {
                mismatches += 1;
                eprintln!("MISMATCH: {record:?}");
            }
        }
    }
    let stats = h.sandbox.stats();
    let (ok, failed, cancelled) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed),
    );
    eprintln!(
        "isolation: {sent} requests ({ok} ok, {failed} failed, {cancelled} cancelled) in {:?}; \
         the sandbox saw {checked} API requests ({rejected} answered 401), {} refreshes; \
         {mismatches} mismatches",
        started.elapsed(),
        stats.refreshes
    );
    assert_eq!(
        mismatches, 0,
        "no request carried another company's credential"
    );
    assert_eq!(failed, 0, "every request that was not cancelled succeeded");
    assert!(checked >= ok);
    assert!(
        rejected > 0,
        "early revocations and superseded tokens met 401s"
    );
    assert!(
        stats.refreshes > (COMPANIES * CLIENTS) as u64,
        "refreshes interleaved"
    );
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.total_revocations(), 0);
}

/// Hands out one fixed credential for every subject, the way a buggy provider would.
#[derive(Debug)]
struct SameForEveryone {
    environment: EnvironmentName,
    credential: Credential,
}

#[async_trait]
impl CredentialProvider for SameForEveryone {
    fn environment(&self) -> &EnvironmentName {
        &self.environment
    }

    async fn credential_for(&self, _subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        Ok(Arc::new(self.credential.clone()))
    }

    async fn rejected(&self, _: &Subject, _: &CredentialId) -> pleo_auth_core::Result<bool> {
        Ok(false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_refused_for_another_company_environment_or_insecure_host() {
    let h = Harness::new(
        SandboxSpec {
            companies: 2,
            ..SandboxSpec::default()
        },
        Arc::new(MemoryStore::new()),
    )
    .await;
    let client = h.replica();
    let a = company(company_uuid(0));
    let b = CompanyId::from_uuid(company_uuid(1));
    h.connect(&client, a).await;
    let manager = client.token_manager();
    let a_credential = manager.access_token(&a).await.unwrap().credential().clone();
    let api_requests = || h.sandbox.stats().api_requests;
    let before = api_requests();

    // A's credential offered for B: refused before sending.
    let leaky = PleoClient::builder(
        h.environment.clone(),
        Arc::new(SameForEveryone {
            environment: h.environment.name().clone(),
            credential: a_credential.clone(),
        }),
    )
    .build()
    .unwrap();
    let err = leaky
        .get("/v1/export-jobs")
        .company(b)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongCompany);
    // B named in the query while the request is for A.
    let api = PleoClient::builder(h.environment.clone(), Arc::new(manager.clone()))
        .build()
        .unwrap();
    let err = api
        .get("/v1/export-jobs")
        .company(a.company().unwrap())
        .query(&[("company_id", b.to_string())])
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongCompany);
    // B is not connected: no credential at all, nothing sent.
    let err = api
        .get("/v1/export-jobs")
        .company(b)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // A sandbox (staging-like) credential is refused for production.
    let err = PleoClient::builder(Environment::production(), Arc::new(manager.clone()))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongEnvironment);
    let mut foreign = a_credential.clone();
    foreign.environment = EnvironmentName::new("production").unwrap();
    let wrong_env = PleoClient::builder(
        h.environment.clone(),
        Arc::new(SameForEveryone {
            environment: h.environment.name().clone(),
            credential: foreign,
        }),
    )
    .build()
    .unwrap();
    let err = wrong_env
        .get("/v1/export-jobs")
        .company(a.company().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongEnvironment);
    assert_eq!(api_requests(), before, "nothing was sent");

    // Plain http is refused for hosts other than loopback, for the API and the token endpoint.
    for base in [
        "http://example.com/",
        "http://10.1.2.3/",
        "http://pleo.io.evil/",
    ] {
        let err = Environment::custom("insecure", base, base).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::InvalidInput | ErrorKind::Config),
            "{base}: {err:?}"
        );
    }
}

/// A listener that answers everything with a redirect to `to`, and counts what it got.
async fn redirector(to: std::net::SocketAddr, status: u16) -> (String, Arc<AtomicU64>) {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut response = axum::response::Response::new(axum::body::Body::empty());
            *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
            response.headers_mut().insert(
                "location",
                format!("http://{to}{}", uri.path()).parse().unwrap(),
            );
            response
        }
    });
    serve(app).await.map(|addr| (base_url(addr), seen)).unwrap()
}

async fn serve(app: axum::Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    // The second listener: it must never hear anything.
    let captured = Arc::new(AtomicU64::new(0));
    let counter = captured.clone();
    let second = serve(axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "captured"
        }
    }))
    .await
    .unwrap();

    let h = Harness::new(SandboxSpec::default(), Arc::new(MemoryStore::new())).await;
    let sandbox_base = h.sandbox.base_url().to_string();
    for status in [301u16, 302, 307, 308] {
        let (redirect_base, redirected) = redirector(second, status).await;

        // The token endpoint redirects: the code exchange fails, the code goes nowhere else.
        let env = Environment::custom("sandbox", &redirect_base, &sandbox_base).unwrap();
        let client = ReplicaSpec {
            environment: &env,
            client: 0,
            store: Arc::new(MemoryStore::new()),
            lease: h.lease.clone(),
            clock: Arc::new(h.clock.clone()),
            policy: fast_policy(),
            events: None,
        }
        .build();
        let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
        let query = format!("code={CANARY}-code&state={}", request.state.expose_secret());
        client.complete(&query).await.unwrap_err();

        // Introspection redirects: the fresh access token goes nowhere else.
        let env = Environment::custom("sandbox", &sandbox_base, &redirect_base).unwrap();
        let client = ReplicaSpec {
            environment: &env,
            client: 0,
            store: Arc::new(MemoryStore::new()),
            lease: h.lease.clone(),
            clock: Arc::new(h.clock.clone()),
            policy: fast_policy(),
            events: None,
        }
        .build();
        h.sandbox
            .set_auto_approve(Some(pleo_auth_sandbox::seed::ACME_DK))
            .unwrap();
        let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
        let location = plain_http()
            .get(request.url.clone())
            .send()
            .await
            .unwrap()
            .headers()["location"]
            .to_str()
            .unwrap()
            .to_owned();
        client.complete(&location).await.unwrap_err();

        // A connected grant whose refresh and API calls meet redirects.
        let good = h.replica();
        h.connect(&good, acme()).await;
        let env = Environment::custom("sandbox", &redirect_base, &redirect_base).unwrap();
        let moved = ReplicaSpec {
            environment: &env,
            client: 0,
            store: h.store.clone(),
            lease: h.lease.clone(),
            clock: Arc::new(h.clock.clone()),
            policy: fast_policy(),
            events: None,
        }
        .build()
        .token_manager();
        let api = PleoClient::builder(env.clone(), Arc::new(moved.clone()))
            .build()
            .unwrap();
        let err = api
            .get("/v1/export-jobs")
            .company(acme().company().unwrap())
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(status), "{err:?}");
        h.advance(ACCESS_TTL);
        moved.access_token(&acme()).await.unwrap_err();

        assert!(
            redirected.load(Ordering::SeqCst) >= 4,
            "the redirector was asked"
        );
        assert_eq!(
            captured.load(Ordering::SeqCst),
            0,
            "{status}: nothing reached the second listener"
        );
    }
}
