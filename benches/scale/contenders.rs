//! The sandbox and the contenders.

use super::*;

/// The sandbox on a runtime of its own, and the environment pointing at it.
pub(crate) struct Fixture {
    pub(crate) _sandbox_runtime: Runtime,
    pub(crate) sandbox: SandboxHandle,
    pub(crate) environment: Environment,
}

impl Fixture {
    pub(crate) fn start() -> Self {
        let sandbox_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sandbox")
            .enable_all()
            .build()
            .unwrap();
        let sandbox = sandbox_runtime
            .block_on(
                Sandbox::builder()
                    .auto_approve(Some(seed::ACME_DK))
                    .client(ClientRegistration {
                        // yup-oauth2 sends the client secret in the form body.
                        accept_client_secret_post: true,
                        ..ClientRegistration::new(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, &[SCOPE])
                    })
                    .start(),
            )
            .expect("sandbox starts");
        let base = sandbox.base_url().to_string();
        let environment = pleo_auth_core::testing::environment_at("sandbox", &base);
        Self {
            _sandbox_runtime: sandbox_runtime,
            sandbox,
            environment,
        }
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}oauth/token", self.sandbox.base_url())
    }

    /// The benchmarks' OAuth client registration against the sandbox.
    pub(crate) fn oauth_config(&self) -> OAuthConfig {
        OAuthConfig::builder()
            .environment(self.environment.clone())
            .client_id(CLIENT_ID)
            .client_secret(ClientSecret::new(CLIENT_SECRET))
            .redirect_uri(REDIRECT_URI)
            .scopes(SCOPE)
            .build()
            .unwrap()
    }

    /// A connected grant of `company` held by a fresh `OAuthClient` on its own memory store.
    pub(crate) async fn connect(
        &self,
        company: uuid::Uuid,
        clock: DynClock,
    ) -> (TokenManager, OAuthGrant) {
        let config = self.oauth_config();
        let store = Arc::new(MemoryStore::new());
        let oauth = OAuthClient::builder(config, store.clone())
            .clock(clock)
            .build()
            .unwrap();
        let subject = subject(company);
        let request = oauth
            .authorize(AuthorizeOptions::new().expect_subject(subject))
            .await
            .unwrap();
        let callback = harness::follow_auto_approve(&harness::http(), &request.url).await;
        oauth.complete(callback.as_str()).await.unwrap();
        let keys = store.list(&StoreKey::parse("pleo-auth").unwrap()).await;
        let key = keys
            .unwrap()
            .into_iter()
            .find(|k| k.as_str().contains("/oauth/"))
            .expect("the grant is stored");
        let (grant, _) = store.get_record::<OAuthGrant>(&key).await.unwrap().unwrap();
        (oauth.token_manager(), grant)
    }
}

pub(crate) fn subject(company: uuid::Uuid) -> Subject {
    format!("urn:pleo:company:{company}").parse().unwrap()
}

pub(crate) fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

pub(crate) fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(all_cores())
        .enable_all()
        .build()
        .unwrap()
}

/// One way of handing out a cached access token.
pub(crate) trait Contender: Send + Sync + 'static {
    fn hit(&self) -> impl Future<Output = ()> + Send + '_;
}

pub(crate) struct FloorToken {
    pub(crate) access_token: String,
    pub(crate) expires_at: Instant,
}

/// The floor: one `ArcSwap` load of the current token.
pub(crate) struct ArcSwapFloor(pub(crate) ArcSwap<FloorToken>);

impl Contender for ArcSwapFloor {
    async fn hit(&self) {
        black_box(self.0.load_full());
    }
}

/// The floor plus the clock read that any cache needs to know the token is still fresh.
pub(crate) struct ArcSwapWithClock(pub(crate) ArcSwap<FloorToken>);

impl Contender for ArcSwapWithClock {
    async fn hit(&self) {
        let token = self.0.load_full();
        black_box(Instant::now() < token.expires_at);
        black_box(&token.access_token);
    }
}

pub(crate) struct Ours {
    pub(crate) manager: TokenManager,
    pub(crate) subject: Subject,
}

impl Contender for Ours {
    async fn hit(&self) {
        black_box(self.manager.access_token(&self.subject).await.unwrap());
    }
}

pub(crate) struct MutexToken {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    pub(crate) expires_at: Instant,
}

/// What hand-written integrations do: a `tokio::sync::Mutex<Option<Token>>`, held across the
/// refresh so that only one caller refreshes; a hit clones the token string.
pub(crate) struct MutexCache {
    pub(crate) state: tokio::sync::Mutex<Option<MutexToken>>,
    pub(crate) http: reqwest::Client,
    pub(crate) token_url: String,
}

impl MutexCache {
    pub(crate) fn new(grant: &OAuthGrant, token_url: String) -> Self {
        Self {
            state: tokio::sync::Mutex::new(Some(MutexToken {
                access_token: grant.access_token.as_ref().unwrap().expose_secret().into(),
                refresh_token: grant.refresh_token.as_ref().unwrap().expose_secret().into(),
                expires_at: Instant::now() + ACCESS_TTL,
            })),
            http: reqwest::Client::new(),
            token_url,
        }
    }

    pub(crate) async fn get(&self) -> Result<String, String> {
        let mut state = self.state.lock().await;
        let current = state.as_ref().ok_or("no token")?;
        if Instant::now() + MUTEX_MARGIN < current.expires_at {
            return Ok(current.access_token.clone());
        }
        let fresh = refresh_raw(&self.http, &self.token_url, &current.refresh_token).await?;
        let access_token = fresh.access_token.clone();
        *state = Some(fresh);
        Ok(access_token)
    }

    pub(crate) async fn expire(&self) {
        if let Some(token) = self.state.lock().await.as_mut() {
            token.expires_at = Instant::now();
        }
    }
}

impl Contender for MutexCache {
    async fn hit(&self) {
        black_box(self.get().await.unwrap());
    }
}

/// `grant_type=refresh_token` with `client_secret_basic`, as a hand-written client sends it.
pub(crate) async fn refresh_raw(
    http: &reqwest::Client,
    token_url: &str,
    refresh_token: &str,
) -> Result<MutexToken, String> {
    let response = http
        .post(token_url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the token endpoint answered {}", response.status()));
    }
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(MutexToken {
        access_token: body["access_token"]
            .as_str()
            .ok_or("no access token")?
            .into(),
        refresh_token: body["refresh_token"]
            .as_str()
            .ok_or("no refresh token")?
            .into(),
        expires_at: Instant::now() + Duration::from_secs(body["expires_in"].as_u64().unwrap_or(0)),
    })
}

/// yup-oauth2's installed-flow authenticator: it refreshes with `client_secret_post` at the
/// sandbox's token endpoint. Its cache (yup's own token file) is seeded with a grant obtained
/// through pleo-auth, because yup's authorization-code flow sends no PKCE, which Pleo requires.
pub(crate) struct Yup(pub(crate) Authenticator<HttpConnector>);

/// yup-oauth2 falls back to asking a person when a refresh fails; nobody is there.
pub(crate) struct NoPerson;

impl InstalledFlowDelegate for NoPerson {
    fn present_user_url<'a>(
        &'a self,
        _url: &'a str,
        _need_code: bool,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        Box::pin(async { Err("no interactive consent in a benchmark".to_owned()) })
    }
}

impl Yup {
    pub(crate) async fn new(fixture: &Fixture, grant: &OAuthGrant, expires_in: Duration) -> Self {
        let dir = std::env::temp_dir().join(format!("pleo-auth-bench-yup-{}", random_urlsafe(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.json");
        let token = TokenInfo {
            access_token: Some(grant.access_token.as_ref().unwrap().expose_secret().into()),
            refresh_token: Some(grant.refresh_token.as_ref().unwrap().expose_secret().into()),
            expires_at: Some(
                time::OffsetDateTime::now_utc()
                    + time::Duration::try_from(expires_in).expect("a short duration"),
            ),
            id_token: None,
        };
        let stored = serde_json::json!([{ "scopes": [SCOPE], "token": token }]);
        std::fs::write(&file, serde_json::to_vec(&stored).unwrap()).unwrap();
        let secret = ApplicationSecret {
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            token_uri: fixture.token_url(),
            auth_uri: format!("{}oauth/authorize", fixture.sandbox.base_url()),
            redirect_uris: vec![REDIRECT_URI.to_owned()],
            ..ApplicationSecret::default()
        };
        let http = HyperClient::builder(TokioExecutor::new()).build_http::<String>();
        let auth = InstalledFlowAuthenticator::with_client(
            secret,
            InstalledFlowReturnMethod::Interactive,
            CustomHyperClientBuilder::from(http),
        )
        .flow_delegate(Box::new(NoPerson))
        .persist_tokens_to_disk(file)
        .build()
        .await
        .expect("yup-oauth2 authenticator");
        Self(auth)
    }

    pub(crate) async fn get(&self) -> Result<String, String> {
        let token = self.0.token(&[SCOPE]).await.map_err(|e| e.to_string())?;
        token
            .token()
            .map(str::to_owned)
            .ok_or_else(|| "no access token".to_owned())
    }
}

impl Contender for Yup {
    async fn hit(&self) {
        black_box(self.0.token(&[SCOPE]).await.unwrap());
    }
}
