//! `PleoAuthMiddleware`: the same logic as [`PleoClient`](crate::PleoClient), as a
//! `reqwest_middleware::Middleware` for an existing middleware stack.

use std::fmt;
use std::sync::Arc;

use http::Extensions;
use pleo_auth_core::{DynCredentialProvider, Environment};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::engine::{Engine, Hop};
use crate::error::Result;
use crate::retry::RetryPolicy;
use crate::target::{RequestOptions, Target};

/// Authenticates Pleo API requests inside a `reqwest_middleware` stack.
///
/// Each request names who it is for with a [`Target`] extension (and optionally
/// [`RequestOptions`]); a request without a `Target` is refused. The middleware applies the
/// same rules as [`PleoClient`](crate::PleoClient): the company and environment guards, `company_id`, one retry
/// after a 401 reported to the provider, `PermissionDenied` for a 403, bounded retries of 429,
/// 502, 503, 504 and connection errors, and no redirects. A request that already carries an
/// `Authorization` header is refused: the provider sets it.
///
/// Its own refusals and final errors are `reqwest_middleware::Error::Middleware` holding a
/// [`crate::Error`]: get it back with `pleo_auth_http::Error::from(err)` or
/// [`crate::Error::from_middleware_ref`]. A failure of the layers below (a connection error that
/// outlasted the retries, say) is handed on unchanged, a `reqwest::Error` without its URL, so
/// that an outer layer still sees it for what it is. Other statuses, including a 429 or 5xx that
/// outlasted the retries, are returned as responses; pass them to [`crate::error_for_status`]
/// for the same errors as the plain client.
///
/// # Where it goes in your stack
///
/// Attach it **last** (`ClientBuilder::with` runs middleware in the order attached, so the last
/// one is closest to the network):
///
/// - it then sees the final URL, so the environment guard checks what is really sent, and no
///   layer after it can rewrite the URL to another host;
/// - no other layer sees the `Authorization` header (it is marked sensitive, but a layer that
///   logs header values could still print it);
/// - your retry layer (for example `reqwest-retry`), attached before it, retries *through* it,
///   so every attempt gets a fresh credential and is guarded again. This middleware's errors
///   (guards, a final 401, a 403) are middleware errors, which such layers treat as final, so
///   they are not retried there; connection errors and 429/5xx responses reach them as usual.
///
/// Retry transient failures in one place only, or attempts multiply: either build this
/// middleware with [`RetryPolicy::none()`](crate::RetryPolicy::none) and let your layer retry
/// (it still gets the 429 and 5xx responses), or keep this middleware's policy and do not retry
/// those statuses in yours. The 401 retry stays here either way.
///
/// The `reqwest::Client` under the stack must not follow redirects: build it with
/// [`transport::http_client`](crate::transport::http_client) or with
/// `redirect::Policy::none()`. If a redirect was followed anyway, the response is refused with a
/// [`Config`](pleo_auth_core::ErrorKind::Config) error.
///
/// ```no_run
/// use std::sync::Arc;
/// use pleo_auth_core::{CompanyId, DynCredentialProvider, Environment};
/// use pleo_auth_http::{PleoAuthMiddleware, Target, transport};
///
/// # async fn run(provider: DynCredentialProvider, company: CompanyId) -> Result<(), pleo_auth_http::Error> {
/// let environment = Environment::staging();
/// let auth = PleoAuthMiddleware::new(environment.clone(), provider)?;
/// let http = transport::http_client(&transport::TransportConfig::default())?;
/// let client = reqwest_middleware::ClientBuilder::new(http)
///     // .with(your_tracing_layer).with(your_retry_layer)
///     .with(auth)
///     .build();
/// let response = client
///     .get(environment.api_url("/v1/export-jobs")?)
///     .with_extension(Target::company(company))
///     .send()
///     .await?;
/// let response = pleo_auth_http::error_for_status(response).await?;
/// println!("{}", response.status());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PleoAuthMiddleware {
    engine: Arc<Engine>,
}

impl fmt::Debug for PleoAuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PleoAuthMiddleware")
            .field("environment", self.engine.environment.name())
            .finish_non_exhaustive()
    }
}

impl PleoAuthMiddleware {
    /// A middleware for `environment` with the default retry policy and no tenant links; use
    /// [`PleoClient::builder`](crate::PleoClient::builder) and
    /// [`build_middleware`](crate::PleoClientBuilder::build_middleware) for more settings.
    pub fn new(environment: Environment, provider: DynCredentialProvider) -> Result<Self> {
        let engine = Engine::new(environment, provider, None, RetryPolicy::default())?;
        Ok(Self::from_engine(Arc::new(engine)))
    }

    pub(crate) fn from_engine(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

#[async_trait::async_trait]
impl Middleware for PleoAuthMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let target = extensions.get::<Target>().cloned();
        let options = extensions
            .get::<RequestOptions>()
            .cloned()
            .unwrap_or_default();
        let mut hop = Hop::Middleware { next, extensions };
        self.engine
            .execute(request, target.as_ref(), &options, &mut hop)
            .await
            .map(|(response, _)| response)
            .map_err(|failure| {
                failure
                    .passthrough
                    .unwrap_or_else(|| reqwest_middleware::Error::middleware(failure.error))
            })
    }
}
