//! The OAuth redirect served two ways: the one-shot loopback listener (CLIs, desktop tools) and
//! the axum router (web integrations), each completing a real connect flow with the sandbox.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pleo_auth_core::{AccessToken, AuthorizationHeader, CredentialKind, ErrorKind};
use pleo_auth_http::LoopbackCallback;
use pleo_auth_sandbox::{harness, seed};

fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_listener_completes_a_real_connect_flow() {
    let sandbox = sandbox().await;
    sandbox.set_auto_approve(Some(seed::ACME_DK)).unwrap();
    let callback = LoopbackCallback::bind("http://127.0.0.1/callback")
        .await
        .unwrap();
    let redirect_uri = callback.redirect_uri().to_string();
    let port = callback.redirect_uri().port().unwrap();
    let waiting = tokio::spawn(callback.wait(Duration::from_secs(30)));

    let browser = harness::http();
    // Another path gets a 404 and leaves the listener waiting.
    let stray = browser
        .get(format!("http://127.0.0.1:{port}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), 404);

    let (verifier, challenge) = harness::pkce();
    let state = pleo_auth_core::random_urlsafe(16);
    let authorize = harness::authorize_url_to(&sandbox, &redirect_uri, &state, &challenge, SCOPES);
    let redirect = browser.get(authorize).send().await.unwrap();
    assert_eq!(redirect.status(), 302);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&redirect_uri));
    let page = browser.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("Authorization received"));
    assert!(!html.contains(CANARY), "the page shows no code");

    let query = waiting.await.unwrap().unwrap();
    assert_eq!(param(&query, "state").as_deref(), Some(state.as_str()));
    let code = param(&query, "code").unwrap();
    assert!(code.starts_with("CANARY-"));
    let tokens = harness::exchange_to(&browser, &sandbox, &code, &redirect_uri, &verifier).await;
    let access = harness::json_str(&tokens, "access_token").to_owned();

    // The listener is gone after its one request.
    assert!(browser.get(&location).send().await.is_err());

    // The token works through the client.
    let mut credential = key_credential("unused", dk(), env_name(&sandbox));
    credential.header = AuthorizationHeader::bearer(&AccessToken::new(access));
    credential.kind = CredentialKind::OAuth;
    let provider = Arc::new(FixedProvider::new(env_name(&sandbox), credential));
    let client = build(&sandbox, provider);
    let jobs: serde_json::Value = client
        .get("/v1/export-jobs")
        .company(dk())
        .json()
        .await
        .unwrap();
    assert!(jobs["data"].is_array());
}

#[tokio::test]
async fn loopback_failure_page_reflects_nothing() {
    let callback = LoopbackCallback::bind("http://[::1]:0/cb").await.unwrap();
    let uri = callback.redirect_uri().clone();
    assert_eq!(uri.host_str(), Some("[::1]"));
    let waiting = tokio::spawn(callback.wait(Duration::from_secs(30)));
    let attack = "<script>alert(1)</script>";
    let mut target = uri.clone();
    target
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", attack)
        .append_pair("state", attack);
    let page = harness::http().get(target).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("Authorization not completed"));
    assert!(!html.contains("script"), "{html}");
    assert!(!html.contains("access_denied"));
    let query = waiting.await.unwrap().unwrap();
    assert_eq!(param(&query, "error").as_deref(), Some("access_denied"));
}

#[tokio::test]
async fn loopback_listener_times_out() {
    let callback = LoopbackCallback::bind("http://localhost/callback")
        .await
        .unwrap();
    let err = callback.wait(Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!err.is_retryable());
}

#[cfg(feature = "axum")]
mod router {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use pleo_auth_core::{
        BrowserBinding, ClientId, Environment, LinkRequest, MemoryStore, Subject, SystemClock,
        TenantId, TenantLinks,
    };
    use pleo_auth_http::{ConnectFlow, DangerAuthorizedElsewhere, Error, connect_router};
    use pleo_auth_sandbox::SandboxHandle;
    use url::Url;

    use super::*;

    /// A tiny connect flow against the sandbox, with plain reqwest.
    #[derive(Debug)]
    struct TestFlow {
        sandbox_auth: Url,
        environment: Environment,
        redirect_uri: Url,
        links: TenantLinks,
        /// state -> (verifier, tenant, browser binding)
        pending: Mutex<HashMap<String, (String, TenantId, String)>>,
        tokens: Mutex<HashMap<Subject, String>>,
    }

    #[async_trait]
    impl ConnectFlow for TestFlow {
        fn redirect_uri(&self) -> &Url {
            &self.redirect_uri
        }

        async fn authorize(
            &self,
            tenant: TenantId,
            browser: &BrowserBinding,
        ) -> Result<Url, Error> {
            let (verifier, challenge) = harness::pkce();
            let state = pleo_auth_core::random_urlsafe(16);
            self.pending.lock().unwrap().insert(
                state.clone(),
                (verifier, tenant, browser.expose_secret().to_owned()),
            );
            let mut url = self.sandbox_auth.join("oauth/authorize").unwrap();
            url.query_pairs_mut()
                .append_pair("response_type", "code")
                .append_pair("client_id", seed::DEMO_CLIENT_ID)
                .append_pair("redirect_uri", self.redirect_uri.as_str())
                .append_pair("scope", SCOPES)
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            Ok(url)
        }

        async fn complete(&self, query: &str, browser: &BrowserBinding) -> Result<String, Error> {
            let refused = || Error::new(ErrorKind::InvalidInput, "the callback is refused");
            let state = param(query, "state").ok_or_else(refused)?;
            let code = param(query, "code").ok_or_else(refused)?;
            let (verifier, tenant, bound) = self
                .pending
                .lock()
                .unwrap()
                .remove(&state)
                .ok_or_else(refused)?;
            if bound != browser.expose_secret() {
                return Err(refused());
            }
            let body: serde_json::Value = harness::http()
                .post(self.sandbox_auth.join("oauth/token").unwrap())
                .basic_auth(seed::DEMO_CLIENT_ID, Some(seed::DEMO_CLIENT_SECRET))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", self.redirect_uri.as_str()),
                    ("code_verifier", verifier.as_str()),
                ])
                .send()
                .await
                .map_err(|_| refused())?
                .json()
                .await
                .map_err(|_| refused())?;
            let access = body["access_token"]
                .as_str()
                .ok_or_else(refused)?
                .to_owned();
            let header = AuthorizationHeader::bearer(&AccessToken::new(access.clone()));
            let introspection =
                pleo_auth_http::api::introspect(&harness::http(), &self.environment, &header)
                    .await?;
            self.links
                .link(&LinkRequest {
                    environment: self.environment.name().clone(),
                    tenant,
                    subject: introspection.subject,
                    credential_kind: CredentialKind::OAuth,
                    client_id: ClientId::new(seed::DEMO_CLIENT_ID).unwrap(),
                    relink: false,
                })
                .await?;
            self.tokens
                .lock()
                .unwrap()
                .insert(introspection.subject, access);
            Ok(format!("Connected {} <ok>", introspection.subject))
        }
    }

    async fn serve(flow: Arc<TestFlow>, listener: tokio::net::TcpListener) {
        // A gateway in front of these routes authorizes the tenant parameter (in this test).
        let app =
            axum::Router::new().nest("/pleo", connect_router(flow, DangerAuthorizedElsewhere));
        axum::serve(listener, app).await.unwrap();
    }

    async fn started(sandbox: &SandboxHandle) -> (Arc<TestFlow>, String) {
        // The router is mounted under /pleo, so the demo client also gets that redirect path.
        let mut client = seed::demo_client();
        client
            .redirect_uris
            .push("http://127.0.0.1/pleo/callback".to_owned());
        sandbox.register_client(client).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/pleo", listener.local_addr().unwrap());
        let flow = Arc::new(TestFlow {
            sandbox_auth: sandbox.auth_url(),
            environment: environment(sandbox),
            redirect_uri: format!("{base}/callback").parse().unwrap(),
            links: TenantLinks::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock)),
            pending: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        });
        tokio::spawn(serve(flow.clone(), listener));
        (flow, base)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn axum_routes_complete_a_real_connect_flow() {
        let sandbox = sandbox().await;
        sandbox.set_auto_approve(Some(seed::ACME_DK)).unwrap();
        let (flow, base) = started(&sandbox).await;
        let browser = harness::http();

        let connect = browser
            .get(format!("{base}/connect?tenant=acme-gmbh"))
            .send()
            .await
            .unwrap();
        assert_eq!(connect.status(), 303);
        let cookie = connect.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.starts_with("pleo-auth-flow="), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let authorize = connect.headers()["location"].to_str().unwrap().to_owned();
        assert!(authorize.starts_with(sandbox.auth_url().as_str()));
        let redirect = browser.get(&authorize).send().await.unwrap();
        assert_eq!(redirect.status(), 302);
        let callback = redirect.headers()["location"].to_str().unwrap().to_owned();
        assert!(callback.starts_with(&format!("{base}/callback?")));
        let page = browser
            .get(&callback)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        let html = page.text().await.unwrap();
        assert!(html.contains("Connected to Pleo"));
        assert!(
            html.contains("&lt;ok&gt;"),
            "the summary is escaped: {html}"
        );
        assert!(!html.contains(CANARY));

        // Replaying the callback fails (state is single use) and reflects nothing.
        let replay = browser
            .get(&callback)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 400);
        let html = replay.text().await.unwrap();
        assert!(!html.contains(CANARY) && !html.contains("state"));

        // The tenant now resolves to the connected company, with its token.
        let access = flow.tokens.lock().unwrap()[&Subject::from(dk())].clone();
        let mut credential = key_credential("unused", dk(), env_name(&sandbox));
        credential.header = AuthorizationHeader::bearer(&AccessToken::new(access));
        credential.kind = CredentialKind::OAuth;
        let provider = Arc::new(FixedProvider::new(env_name(&sandbox), credential));
        let client = pleo_auth_http::PleoClient::builder(environment(&sandbox), provider)
            .tenant_links(flow.links.clone())
            .build()
            .unwrap();
        client
            .get("/v1/export-jobs")
            .tenant("acme-gmbh")
            .send()
            .await
            .unwrap();
        let log = sandbox.request_log();
        assert_eq!(
            log.last().unwrap().company_id.as_deref(),
            Some(seed::ACME_DK.to_string().as_str())
        );
        let unknown = client
            .get("/v1/export-jobs")
            .tenant("other")
            .send()
            .await
            .unwrap_err();
        assert_eq!(unknown.kind(), ErrorKind::NotFound);
        assert_eq!(sandbox.request_log().len(), log.len(), "nothing sent");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn axum_routes_refuse_bad_input_without_reflecting_it() {
        let sandbox = sandbox().await;
        let (_flow, base) = started(&sandbox).await;
        let browser = harness::http();
        for url in [
            format!("{base}/connect?tenant=a&tenant=b"),
            format!("{base}/connect?tenant=%3Cscript%3E&x=1"),
        ] {
            let response = browser.get(url).send().await.unwrap();
            assert_eq!(response.status(), 400);
            assert!(!response.text().await.unwrap().contains("script"));
        }
        // Authorized elsewhere, the tenant parameter is required.
        let response = browser.get(format!("{base}/connect")).send().await.unwrap();
        assert_eq!(response.status(), 403);
        let response = browser
            .get(format!("{base}/callback?code=%3Cscript%3E&state=forged"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let html = response.text().await.unwrap();
        assert!(html.contains("Authorization not completed"));
        assert!(!html.contains("script") && !html.contains("forged"));
        assert_eq!(sandbox.stats().token_requests_for("authorization_code"), 0);
    }
}
