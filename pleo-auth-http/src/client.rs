//! `PleoClient`: the plain authenticated client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pleo_auth_core::{
    CompanyId, DynCredentialProvider, Environment, ErrorKind, OrganisationId, Scope, TenantId,
    TenantLinks,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{Engine, Hop, secrets};
use crate::error::{Error, Result};
use crate::middleware::PleoAuthMiddleware;
use crate::retry::RetryPolicy;
use crate::status::status_error;
use crate::target::{RequestOptions, Target};
use crate::transport::{TransportConfig, http_client, read_body_capped};

/// Default largest successful response body read by [`Response::bytes`], [`Response::text`] and
/// [`Response::json`].
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// An authenticated client for one Pleo environment's External API.
///
/// Every request names who it is for ([`RequestBuilder::company`],
/// [`RequestBuilder::organisation`] with a company, or [`RequestBuilder::tenant`]); the client
/// asks the [`CredentialProvider`](pleo_auth_core::CredentialProvider) for that subject's
/// credential, refuses it unless its subject and environment match the request, adds
/// `company_id`, and sends it to the environment's API host only. A 401 is reported to the
/// provider and retried once; a 403 is a
/// [`PermissionDenied`](pleo_auth_core::ErrorKind::PermissionDenied) error and never a refresh;
/// 429, 502, 503, 504 and connection errors are retried per the [`RetryPolicy`]. Redirects are
/// never followed. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct PleoClient {
    engine: Arc<Engine>,
    http: reqwest::Client,
    max_response_bytes: usize,
}

impl fmt::Debug for PleoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PleoClient")
            .field("environment", self.engine.environment.name())
            .field("api_base", &self.engine.environment.api_base().as_str())
            .finish_non_exhaustive()
    }
}

/// Configures a [`PleoClient`] or a [`PleoAuthMiddleware`]. Obtain one with
/// [`PleoClient::builder`].
pub struct PleoClientBuilder {
    environment: Environment,
    provider: DynCredentialProvider,
    tenants: Option<TenantLinks>,
    policy: RetryPolicy,
    transport: TransportConfig,
    max_response_bytes: usize,
}

impl fmt::Debug for PleoClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PleoClientBuilder")
            .field("environment", self.environment.name())
            .field("provider", &self.provider)
            .field("tenant_links", &self.tenants.is_some())
            .field("policy", &self.policy)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl PleoClientBuilder {
    /// Resolves [`RequestBuilder::tenant`] through these links (usually
    /// `TenantLinks::new(store, clock)` over the store that holds the credentials).
    pub fn tenant_links(mut self, links: TenantLinks) -> Self {
        self.tenants = Some(links);
        self
    }

    /// How transient failures are retried (default [`RetryPolicy::default`]).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Time allowed for one HTTP exchange, from connect to the last body byte (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.transport.timeout = timeout;
        self
    }

    /// Time allowed to connect (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.transport.connect_timeout = timeout;
        self
    }

    /// Names your application in front of the library in the `User-Agent` header, as in
    /// `my-erp-sync/2.1 pleo-auth/0.1.0`.
    pub fn user_agent_prefix(mut self, prefix: &str) -> Self {
        self.transport.user_agent = format!("{prefix} {}", TransportConfig::default().user_agent);
        self
    }

    /// Largest successful response body read (default [`DEFAULT_MAX_RESPONSE_BYTES`]).
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Builds the client: rustls, no redirects, the configured timeouts and user agent.
    ///
    /// Fails with [`WrongEnvironment`](pleo_auth_core::ErrorKind::WrongEnvironment) if the
    /// provider holds another environment's credentials.
    pub fn build(self) -> Result<PleoClient> {
        let http = http_client(&self.transport)
            .map_err(|e| Error::wrap(e, "building the HTTP client failed"))?;
        Ok(PleoClient {
            engine: Arc::new(Engine::new(
                self.environment,
                self.provider,
                self.tenants,
                self.policy,
            )?),
            http,
            max_response_bytes: self.max_response_bytes,
        })
    }

    /// Builds a [`PleoAuthMiddleware`] with the same settings, for an existing
    /// `reqwest_middleware` stack (the transport settings are then those of your client).
    pub fn build_middleware(self) -> Result<PleoAuthMiddleware> {
        Ok(PleoAuthMiddleware::from_engine(Arc::new(Engine::new(
            self.environment,
            self.provider,
            self.tenants,
            self.policy,
        )?)))
    }
}

impl PleoClient {
    /// A builder for a client of `environment` whose credentials come from `provider`.
    pub fn builder(environment: Environment, provider: DynCredentialProvider) -> PleoClientBuilder {
        PleoClientBuilder {
            environment,
            provider,
            tenants: None,
            policy: RetryPolicy::default(),
            transport: TransportConfig::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// The environment this client talks to.
    pub fn environment(&self) -> &Environment {
        &self.engine.environment
    }

    /// A middleware with this client's provider, tenant links and retry policy.
    pub fn middleware(&self) -> PleoAuthMiddleware {
        PleoAuthMiddleware::from_engine(self.engine.clone())
    }

    /// A request with `method` to `path` (such as `/v1/export-jobs`) on the API host.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let inner = self
            .engine
            .environment
            .api_url(path)
            .map(|url| self.http.request(method, url))
            .map_err(|e| Error::wrap(e, "the API path is refused"));
        RequestBuilder {
            client: self.clone(),
            inner,
            target: Target::default(),
            options: RequestOptions::default(),
            deferred: None,
        }
    }

    /// A `GET` request to `path`.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A `POST` request to `path`. Not retried on transient failures unless
    /// [`RequestBuilder::retry_non_idempotent`] is set.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// A `PUT` request to `path`.
    pub fn put(&self, path: &str) -> RequestBuilder {
        self.request(Method::PUT, path)
    }

    /// A `PATCH` request to `path`. Not retried on transient failures unless
    /// [`RequestBuilder::retry_non_idempotent`] is set.
    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    /// A `DELETE` request to `path`.
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }
}

/// One request being built. Nothing is sent until [`RequestBuilder::send`] or
/// [`RequestBuilder::json`]; errors in the builder's arguments are reported there.
pub struct RequestBuilder {
    client: PleoClient,
    inner: Result<reqwest::RequestBuilder>,
    target: Target,
    options: RequestOptions,
    deferred: Option<Error>,
}

impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("target", &self.target)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RequestBuilder {
    fn map(mut self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        self.inner = self.inner.map(f);
        self
    }

    /// The request is for `company`: sent as `company_id`, with the company's credential unless
    /// [`Self::organisation`] or [`Self::tenant`] names another.
    pub fn company(mut self, company: CompanyId) -> Self {
        self.target.company = Some(company);
        self
    }

    /// Uses the credential of `organisation`; the company must be named with [`Self::company`].
    pub fn organisation(mut self, organisation: OrganisationId) -> Self {
        self.target.organisation = Some(organisation);
        self
    }

    /// The request is for the Pleo subject linked to your `tenant` (see
    /// [`PleoClientBuilder::tenant_links`]).
    pub fn tenant(mut self, tenant: impl AsRef<str>) -> Self {
        match TenantId::new(tenant.as_ref()) {
            Ok(tenant) => self.target.tenant = Some(tenant),
            Err(e) => self.deferred = Some(Error::wrap(e, "the tenant id is refused")),
        }
        self
    }

    /// Sets who the request is for in one go.
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Sets the per-request options in one go.
    pub fn options(mut self, options: RequestOptions) -> Self {
        self.options = options;
        self
    }

    /// Retries this request on transient failures even though its method is not idempotent.
    pub fn retry_non_idempotent(mut self) -> Self {
        self.options.retry_non_idempotent = true;
        self
    }

    /// Names a scope the endpoint needs, reported in a `PermissionDenied` error.
    pub fn required_scope(mut self, scope: Scope) -> Self {
        self.options.required_scopes.insert(scope);
        self
    }

    /// Adds query parameters (serialised with `serde_urlencoded`). A `company_id` here must
    /// match the request's company.
    pub fn query<T: Serialize + ?Sized>(self, query: &T) -> Self {
        self.map(|b| b.query(query))
    }

    /// Adds a header. `Authorization` is refused at send time: the provider sets it.
    pub fn header(self, name: HeaderName, value: HeaderValue) -> Self {
        self.map(|b| b.header(name, value))
    }

    /// Adds headers.
    pub fn headers(self, headers: HeaderMap) -> Self {
        self.map(|b| b.headers(headers))
    }

    /// A JSON body.
    pub fn json_body<T: Serialize + ?Sized>(self, body: &T) -> Self {
        self.map(|b| b.json(body))
    }

    /// A raw body.
    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        self.map(|b| b.body(body))
    }

    /// Time allowed for each attempt of this request, overriding the client's timeout.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.timeout(timeout))
    }

    /// Sends the request. A non-success status becomes an [`Error`] with the status and what
    /// the server said.
    pub async fn send(self) -> Result<Response> {
        if let Some(err) = self.deferred {
            return Err(err);
        }
        let request = self.inner?.build().map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "the request cannot be built")
                .with_source(e.without_url())
        })?;
        let client = self.client;
        let (response, credential) = client
            .engine
            .execute(
                request,
                Some(&self.target),
                &self.options,
                &mut Hop::Client(&client.http),
            )
            .await
            .map_err(|failure| failure.error)?;
        if !response.status().is_success() {
            return Err(status_error(
                response,
                &self.options.required_scopes,
                &secrets(&credential),
            )
            .await);
        }
        Ok(Response {
            inner: response,
            max_bytes: client.max_response_bytes,
        })
    }

    /// Sends the request and reads the JSON body of the successful response.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T> {
        self.send().await?.json().await
    }
}

/// A successful (2xx) API response.
pub struct Response {
    inner: reqwest::Response,
    max_bytes: usize,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.inner.status().as_u16())
            .field("path", &self.inner.url().path())
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The body, refused if larger than the client's limit.
    pub async fn bytes(self) -> Result<Bytes> {
        read_body_capped(self.inner, self.max_bytes)
            .await
            .map_err(|e| Error::wrap(e, "reading the response body failed"))
    }

    /// The body as UTF-8 text.
    pub async fn text(self) -> Result<String> {
        let bytes = self.bytes().await?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::new(ErrorKind::Unexpected, "the response body is not UTF-8"))
    }

    /// The body as JSON. A decoding error names the position, not the content.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!(
                    "the response body is not the expected JSON ({:?} error at line {}, column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        })
    }

    /// The underlying reqwest response.
    pub fn into_inner(self) -> reqwest::Response {
        self.inner
    }
}
