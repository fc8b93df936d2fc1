//! `pleo-auth demo`: the whole story against an in-process sandbox, narrated and checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth::apikey::{ApiKeyConfig, ConnectOptions};
use pleo_auth::http::LoopbackCallback;
use pleo_auth::oauth::{AuthorizeOptions, GrantState, OAuthConfig};
use pleo_auth::sandbox::{
    AuthMethod, RevokeTarget, Sandbox, SandboxHandle, seed, token_fingerprint,
};
use pleo_auth::{
    ApiKey, ClientId, ClientSecret, CompanyId, Environment, ErrorKind, ManualClock, OAuthGrant,
    PleoAuth, RecordStoreExt, Subject, TenantId, layout,
};
use tokio::task::JoinSet;

use super::exit::CliError;
use super::output::{method_name, print_table};

/// How many requests race for the token when it expires.
const CONCURRENT_CALLERS: usize = 100;
/// How far the clocks move to expire the first access token (the sandbox issues 15 minutes).
const PAST_EXPIRY: Duration = Duration::from_secs(16 * 60);

/// Runs the demo; any failed check is an error (exit code 1).
pub async fn run() -> Result<(), CliError> {
    let started = Instant::now();
    let mut demo = Demo::start().await?;
    demo.connect().await?;
    demo.call_right_company().await?;
    demo.refuse_other_company().await?;
    demo.expire_under_load().await?;
    demo.integrated_key().await?;
    demo.revocation().await?;
    demo.summary().await?;
    outln!(
        "\nAll checks passed in {:.1}s. Next: `pleo-auth sandbox`, then `pleo-auth login` against it (see --help).",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fails the demo with `what` unless `ok`.
fn check(ok: bool, what: impl Into<String>) -> Result<(), CliError> {
    if ok {
        Ok(())
    } else {
        Err(CliError::other(format!(
            "demo check failed: {}",
            what.into()
        )))
    }
}

fn step(n: u32, text: &str) {
    outln!("\n{n}. {text}");
}

fn fact(text: impl AsRef<str>) {
    outln!("   - {}", text.as_ref());
}

struct Demo {
    sandbox: SandboxHandle,
    environment: Environment,
    clock: ManualClock,
    callback: Option<LoopbackCallback>,
    auth: PleoAuth,
    _dir: tempfile::TempDir,
    acme: Subject,
}

fn acme() -> CompanyId {
    CompanyId::from_uuid(seed::ACME_DK)
}

fn globex() -> CompanyId {
    CompanyId::from_uuid(seed::GLOBEX)
}

impl Demo {
    async fn start() -> Result<Self, CliError> {
        outln!("pleo-auth demo: the whole story against a local Pleo sandbox, every step checked.");
        let sandbox = Sandbox::builder()
            .auto_approve(Some(seed::ACME_DK))
            .start()
            .await
            .map_err(|e| CliError::other("starting the sandbox failed").with_source(e))?;
        let base = sandbox.base_url();
        let environment = Environment::custom("sandbox", base.as_str(), base.as_str())
            .map_err(|e| CliError::core("the sandbox URL is refused", e))?;
        let dir = tempfile::tempdir()
            .map_err(|e| CliError::other("creating a temporary directory failed").with_source(e))?;
        let store_root = dir.path().join("store");
        let clock = ManualClock::new();
        let callback = LoopbackCallback::bind("http://127.0.0.1/callback")
            .await
            .map_err(|e| CliError::http("cannot listen for the OAuth callback", e))?;
        let oauth = OAuthConfig::builder()
            .environment(environment.clone())
            .client_id(seed::DEMO_CLIENT_ID)
            .client_secret(ClientSecret::new(seed::DEMO_CLIENT_SECRET))
            .redirect_uri(callback.redirect_uri().as_str())
            .scopes("users:read export-jobs:read")
            .build()
            .map_err(|e| CliError::oauth("the OAuth configuration is refused", e))?;
        let integration = ClientId::new(seed::DEMO_CLIENT_ID)
            .map_err(|e| CliError::core("the integration id is refused", e))?;
        let required: pleo_auth::ScopeSet = "users:read"
            .parse()
            .map_err(|e| CliError::core("the required scopes are refused", e))?;
        let auth = PleoAuth::builder()
            .environment(environment.clone())
            .file_store(&store_root)
            .clock(Arc::new(clock.clone()))
            .oauth(oauth)
            .api_keys(
                ApiKeyConfig::new(environment.clone(), integration).with_required_scopes(required),
            )
            .build()
            .map_err(|e| CliError::facade("setting up pleo-auth failed", e))?;
        outln!(
            "   sandbox {base} (auto-approves consent for Acme Denmark ApS), file store {}",
            store_root.display()
        );
        Ok(Self {
            sandbox,
            environment,
            clock,
            callback: Some(callback),
            auth,
            _dir: dir,
            acme: Subject::Company(acme()),
        })
    }

    fn api_requests(&self) -> usize {
        self.sandbox.request_log().len()
    }

    /// 1. The OAuth flow, with a browser stand-in following the consent redirect.
    async fn connect(&mut self) -> Result<(), CliError> {
        step(
            1,
            "Connect Acme Denmark ApS with OAuth 2.0 (PKCE S256), for the tenant \"acme-dk\"",
        );
        let tenant = TenantId::new("acme-dk").map_err(|e| CliError::core("bad tenant", e))?;
        let oauth = self
            .auth
            .oauth()
            .map_err(|e| CliError::facade("OAuth is not configured", e))?;
        let request = oauth
            .authorize(AuthorizeOptions::new().tenant(tenant))
            .await
            .map_err(|e| CliError::oauth("starting the authorization failed", e))?;
        let mut shown = request.url.clone();
        shown.set_query(None);
        fact(format!(
            "authorization URL: {shown}?response_type=code&code_challenge_method=S256&..."
        ));
        let callback = self
            .callback
            .take()
            .ok_or_else(|| CliError::other("the callback listener is gone"))?;
        let waiting = tokio::spawn(callback.wait(Duration::from_secs(30)));
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CliError::other("building the browser stand-in failed").with_source(e))?;
        let consent =
            browser.get(request.url.clone()).send().await.map_err(|e| {
                CliError::other("opening the authorization URL failed").with_source(e)
            })?;
        let location = consent
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        check(
            consent.status().is_redirection() && location.is_some(),
            format!(
                "the consent page redirects back (got HTTP {})",
                consent.status()
            ),
        )?;
        let location = location.unwrap_or_default();
        browser
            .get(&location)
            .send()
            .await
            .map_err(|e| CliError::other("following the redirect failed").with_source(e))?;
        let query = waiting
            .await
            .map_err(|e| CliError::other("the callback listener failed").with_source(e))?
            .map_err(|e| CliError::http("no authorization arrived", e))?;
        fact("consent approved; the browser came back to the loopback listener with a code");
        let connection = oauth
            .complete(&query)
            .await
            .map_err(|e| CliError::oauth("finishing the authorization failed", e))?;
        check(
            connection.subject == self.acme,
            "the connected company is Acme Denmark",
        )?;
        check(
            connection.tenant.as_ref().map(TenantId::as_str) == Some("acme-dk"),
            "the tenant acme-dk is linked",
        )?;
        let grant = self.grant().await?;
        fact(format!(
            "connected company {} (Acme Denmark ApS), scopes: {}",
            acme(),
            connection.scopes
        ));
        fact(format!(
            "grant stored in the file store, generation {}; tenant acme-dk <-> company {} linked",
            grant.generation,
            acme()
        ));
        Ok(())
    }

    async fn grant(&self) -> Result<OAuthGrant, CliError> {
        let key = layout::oauth_grant(&pleo_auth::CredentialKey::new(
            self.environment.name().clone(),
            ClientId::new(seed::DEMO_CLIENT_ID).map_err(|e| CliError::core("bad client id", e))?,
            self.acme,
        ));
        self.auth
            .store()
            .get_record::<OAuthGrant>(&key)
            .await
            .map_err(|e| CliError::core("reading the grant failed", e))?
            .map(|(grant, _)| grant)
            .ok_or_else(|| CliError::other("demo check failed: the grant is stored"))
    }

    /// 2. A call for the right company.
    async fn call_right_company(&self) -> Result<(), CliError> {
        step(2, "Call the API for tenant \"acme-dk\"");
        let employees: serde_json::Value = self
            .auth
            .client()
            .get("/v2/employees")
            .tenant("acme-dk")
            .json()
            .await
            .map_err(|e| CliError::http("GET /v2/employees failed", e))?;
        let count = employees["data"].as_array().map_or(0, Vec::len);
        let log = self.sandbox.request_log();
        let last = log.last();
        check(count > 0, "employees were returned")?;
        check(
            last.and_then(|r| r.company_id.as_deref()) == Some(&acme().to_string()),
            "the sandbox saw company_id of Acme Denmark",
        )?;
        check(
            last.and_then(|r| r.subject_urn.as_deref()) == Some(&self.acme.to_string()),
            "the token used belongs to Acme Denmark",
        )?;
        fact(format!(
            "GET /v2/employees -> 200, {count} employees; the sandbox saw company_id={} with Acme Denmark's own token",
            acme()
        ));
        Ok(())
    }

    /// 3. A call that names another company is refused before it leaves the process.
    async fn refuse_other_company(&self) -> Result<(), CliError> {
        step(
            3,
            "Call the API for tenant \"acme-dk\" but naming Globex Ltd as the company",
        );
        let before = self.api_requests();
        let err = self
            .auth
            .client()
            .get("/v2/employees")
            .tenant("acme-dk")
            .company(globex())
            .send()
            .await
            .err();
        let sent = self.api_requests() - before;
        let kind = err.as_ref().map(pleo_auth::http::Error::kind);
        check(
            kind == Some(ErrorKind::WrongCompany),
            "the call is refused as wrong_company",
        )?;
        check(sent == 0, "nothing reached the sandbox")?;
        fact(format!(
            "refused before sending: {} ({}); requests that reached Pleo: {sent}",
            kind.map_or("none", ErrorKind::as_str),
            err.map(|e| e.to_string()).unwrap_or_default()
        ));
        Ok(())
    }

    /// 4. Expiry with many concurrent callers: exactly one refresh, rotation persisted.
    async fn expire_under_load(&self) -> Result<(), CliError> {
        step(
            4,
            &format!(
                "Let the access token expire, then {CONCURRENT_CALLERS} concurrent requests for Acme Denmark"
            ),
        );
        let before = self.grant().await?;
        let stats_before = self.sandbox.stats();
        self.clock.advance(PAST_EXPIRY);
        self.sandbox.advance_clock(PAST_EXPIRY);
        fact("clocks moved 16 minutes ahead: the 15-minute access token has expired");
        let mut callers = JoinSet::new();
        for _ in 0..CONCURRENT_CALLERS {
            let client = self.auth.client().clone();
            callers.spawn(async move {
                client
                    .get("/v2/employees")
                    .company(acme())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
        }
        let mut ok = 0;
        while let Some(joined) = callers.join_next().await {
            if matches!(joined, Ok(Ok(200))) {
                ok += 1;
            }
        }
        let stats = self.sandbox.stats();
        let refreshes = stats.refreshes - stats_before.refreshes;
        let reuses = stats.refresh_token_reuses - stats_before.refresh_token_reuses;
        let after = self.grant().await?;
        check(
            ok == CONCURRENT_CALLERS,
            format!("all {CONCURRENT_CALLERS} requests succeeded (got {ok})"),
        )?;
        check(
            refreshes == 1,
            format!("exactly 1 refresh reached the token endpoint (got {refreshes})"),
        )?;
        check(reuses == 0, "no refresh token was presented twice")?;
        check(
            after.generation == before.generation + 1,
            "the stored generation moved by one",
        )?;
        let fingerprint = |grant: &OAuthGrant| {
            grant
                .refresh_token
                .as_ref()
                .map(|t| token_fingerprint(t.expose_secret()))
                .unwrap_or_default()
        };
        check(
            fingerprint(&before) != fingerprint(&after),
            "the refresh token rotated",
        )?;
        fact(format!(
            "{ok} x HTTP 200; refreshes at the token endpoint: {refreshes}; refresh tokens reused: {reuses}"
        ));
        fact(format!(
            "rotation persisted with compare-and-swap: generation {} -> {}, refresh token {} -> {} (SHA-256 fingerprints)",
            before.generation,
            after.generation,
            fingerprint(&before),
            fingerprint(&after)
        ));
        Ok(())
    }

    /// 5. An Integrated API key connected (validated, installed, stored, linked) and used.
    async fn integrated_key(&self) -> Result<(), CliError> {
        step(
            5,
            "Connect Globex Ltd with an Integrated API key, for the tenant \"globex\"",
        );
        let key = ApiKey::new(
            self.sandbox
                .mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX),
        );
        let keys = self
            .auth
            .api_keys()
            .map_err(|e| CliError::facade("API keys are not configured", e))?;
        let tenant = TenantId::new("globex").map_err(|e| CliError::core("bad tenant", e))?;
        let connected = keys
            .connect_with(key, ConnectOptions::new().tenant(tenant))
            .await
            .map_err(|e| CliError::apikey("connecting the key failed", e))?;
        check(
            connected.key.subject == Subject::Company(globex()),
            "the key belongs to Globex",
        )?;
        fact(format!(
            "key {} validated with /v1/introspect (company {}, scopes {}), installation created, stored",
            connected.key.masked_key,
            globex(),
            connected.key.scopes
        ));
        let employees: serde_json::Value = self
            .auth
            .client()
            .get("/v2/employees")
            .tenant("globex")
            .json()
            .await
            .map_err(|e| CliError::http("GET /v2/employees for globex failed", e))?;
        let log = self.sandbox.request_log();
        let last = log.last();
        check(
            last.and_then(|r| r.auth_method) == Some(AuthMethod::ApiKey),
            "the request was sent with the API key",
        )?;
        check(
            last.and_then(|r| r.company_id.as_deref()) == Some(&globex().to_string()),
            "the request named Globex",
        )?;
        fact(format!(
            "GET /v2/employees for tenant globex -> 200, {} employees, sent with the API key (the same client picks the method per company)",
            employees["data"].as_array().map_or(0, Vec::len)
        ));
        Ok(())
    }

    /// 6. The customer revokes consent: detected and reported, not retried in a loop.
    async fn revocation(&self) -> Result<(), CliError> {
        step(6, "Acme Denmark revokes the consent at Pleo");
        let revoked = self.sandbox.revoke_grant(RevokeTarget::Client {
            client_id: seed::DEMO_CLIENT_ID.to_owned(),
            subject: seed::ACME_DK,
        });
        check(revoked == 1, "the sandbox revoked the grant")?;
        let token_requests = |s: &pleo_auth::sandbox::Stats| s.token_requests_for("refresh_token");
        let before = token_requests(&self.sandbox.stats());
        let err = self
            .auth
            .client()
            .get("/v2/employees")
            .tenant("acme-dk")
            .send()
            .await
            .err();
        let kind = err.as_ref().map(pleo_auth::http::Error::kind);
        check(
            kind == Some(ErrorKind::NeedsReauthorization),
            format!("the call reports needs_reauthorization (got {kind:?})"),
        )?;
        let manager = self
            .auth
            .token_manager()
            .map_err(|e| CliError::facade("OAuth is not configured", e))?;
        let status = manager
            .status(&self.acme)
            .await
            .map_err(|e| CliError::oauth("reading the grant status failed", e))?;
        check(
            status.state == GrantState::NeedsReauthorization,
            "the grant is marked",
        )?;
        let after_first = token_requests(&self.sandbox.stats());
        let api_before = self.api_requests();
        let again = self
            .auth
            .client()
            .get("/v2/employees")
            .tenant("acme-dk")
            .send()
            .await
            .err()
            .map(|e| e.kind());
        check(
            again == Some(ErrorKind::NeedsReauthorization),
            "a second call fails the same way",
        )?;
        check(
            token_requests(&self.sandbox.stats()) == after_first
                && self.api_requests() == api_before,
            "the second call does not reach Pleo",
        )?;
        fact(format!(
            "the next request got 401, one refresh was tried ({} token request) and Pleo answered invalid_grant",
            after_first - before
        ));
        fact(
            "the grant is kept and marked needs_reauthorization (exit code 4 in the CLI); a second call fails fast without calling Pleo",
        );
        Ok(())
    }

    async fn summary(&self) -> Result<(), CliError> {
        step(7, "What `pleo-auth status` shows now");
        let connections = self
            .auth
            .connections()
            .await
            .map_err(|e| CliError::facade("listing the connections failed", e))?;
        check(connections.len() == 2, "two connections are stored")?;
        let rows: Vec<Vec<String>> = connections
            .iter()
            .map(|c| {
                vec![
                    c.tenant.as_ref().map_or("-", TenantId::as_str).to_owned(),
                    c.subject
                        .company()
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    method_name(c.method).to_owned(),
                    c.environment.to_string(),
                    c.state.to_string(),
                ]
            })
            .collect();
        print_table(
            &["TENANT", "PLEO COMPANY", "METHOD", "ENVIRONMENT", "STATE"],
            &rows,
        );
        Ok(())
    }
}
