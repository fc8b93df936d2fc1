//! The request logic shared by [`PleoClient`](crate::PleoClient) and
//! [`PleoAuthMiddleware`](crate::PleoAuthMiddleware): resolve who the request is for, guard the
//! credential and the URL, send, and handle 401, 403, redirects and transient failures.

use std::sync::Arc;

use http::Extensions;
use pleo_auth_core::{
    CompanyId, Credential, DynCredentialProvider, Environment, ErrorKind, Subject, TenantLinks,
    check_transport_security,
};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use reqwest_middleware::Next;
use tokio::time::Instant;

use crate::api::sensitive_header;
use crate::error::{Error, Result};
use crate::retry::{RetryPolicy, is_idempotent};
use crate::status::status_error;
use crate::target::{RequestOptions, Target};
use crate::transport::{parse_retry_after, transport_error, transport_error_kind};

/// Everything a request needs besides the HTTP client.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) environment: Environment,
    provider: DynCredentialProvider,
    tenants: Option<TenantLinks>,
    policy: RetryPolicy,
}

/// The credential subject and the company a request acts for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    subject: Subject,
    company: CompanyId,
}

/// Where a prepared request goes next: the HTTP client, or the rest of a middleware stack.
pub(crate) enum Hop<'a> {
    Client(&'a reqwest::Client),
    Middleware {
        next: Next<'a>,
        extensions: &'a mut Extensions,
    },
}

/// Why [`Engine::execute`] failed, and for a middleware stack, the failure of the layers below
/// to hand on unchanged (so that an outer retry layer still sees a transport error as one).
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) passthrough: Option<reqwest_middleware::Error>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self {
            error,
            passthrough: None,
        }
    }
}

/// A request that got no response.
struct SendFailure {
    /// The connection could not be made, so no byte of the request left the process.
    nothing_sent: bool,
    failure: Failure,
}

impl SendFailure {
    fn from_reqwest(err: reqwest::Error) -> Self {
        Self {
            nothing_sent: err.is_connect(),
            failure: Error::wrap(transport_error(err), "sending the request failed").into(),
        }
    }

    /// A failure below this middleware: classified here, handed on as it is (without its URL).
    fn from_middleware(err: reqwest_middleware::Error) -> Self {
        match err {
            reqwest_middleware::Error::Reqwest(e) => Self {
                nothing_sent: e.is_connect(),
                failure: Failure {
                    error: Error::new(transport_error_kind(&e), "sending the request failed"),
                    passthrough: Some(reqwest_middleware::Error::Reqwest(e.without_url())),
                },
            },
            other => Self {
                nothing_sent: false,
                failure: Failure {
                    error: Error::new(ErrorKind::Unexpected, "a middleware below failed"),
                    passthrough: Some(other),
                },
            },
        }
    }
}

impl Hop<'_> {
    async fn send(
        &mut self,
        request: reqwest::Request,
    ) -> std::result::Result<reqwest::Response, SendFailure> {
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let sent = match self {
            Hop::Client(client) => client
                .execute(request)
                .await
                .map_err(SendFailure::from_reqwest),
            Hop::Middleware { next, extensions } => next
                .clone()
                .run(request, extensions)
                .await
                .map_err(SendFailure::from_middleware),
        };
        // Feature `metrics`: each attempt by status class, never with a company or path.
        #[cfg(feature = "metrics")]
        {
            let class = match &sent {
                Ok(response) => match response.status().as_u16() {
                    100..=199 => "1xx",
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                },
                Err(_) => "error",
            };
            metrics::counter!("pleo_auth_requests_total", "status_class" => class).increment(1);
            metrics::histogram!("pleo_auth_request_duration_seconds", "status_class" => class)
                .record(started.elapsed().as_secs_f64());
        }
        sent
    }
}

/// Hands out the request, or a copy of it for each attempt when its body can be replayed.
struct Replay {
    template: Option<reqwest::Request>,
    replayable: bool,
}

impl Replay {
    fn new(request: reqwest::Request) -> Self {
        let replayable = request.try_clone().is_some();
        Self {
            template: Some(request),
            replayable,
        }
    }

    fn next(&mut self) -> Result<reqwest::Request> {
        let request = if self.replayable {
            self.template.as_ref().and_then(reqwest::Request::try_clone)
        } else {
            self.template.take()
        };
        request.ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                "the request body cannot be sent a second time",
            )
        })
    }
}

/// The secret strings of a credential, redacted from anything the server says back.
pub(crate) fn secrets(credential: &Credential) -> [&str; 2] {
    let full = credential.header.expose_secret();
    let token = full.split_once(' ').map_or(full, |(_, token)| token);
    [full, token]
}

fn refused(kind: ErrorKind, message: &'static str) -> Error {
    Error::new(kind, message)
}

fn past_deadline() -> Error {
    refused(ErrorKind::Unavailable, "the call's deadline passed")
}

/// Runs `work` (a credential lookup, a tenant lookup, a rejection report) within the call's
/// deadline, so a provider or store that hangs cannot hold the caller past it. An abandoned
/// credential lookup is safe: providers finish refreshes in tasks of their own.
async fn within<T, E>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = std::result::Result<T, E>>,
    elapsed: impl FnOnce() -> E,
) -> std::result::Result<T, E> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or_else(|_| Err(elapsed())),
        None => work.await,
    }
}

impl Engine {
    pub(crate) fn new(
        environment: Environment,
        provider: DynCredentialProvider,
        tenants: Option<TenantLinks>,
        policy: RetryPolicy,
    ) -> Result<Self> {
        if provider.environment() != environment.name() {
            return Err(refused(
                ErrorKind::WrongEnvironment,
                "the credential provider holds credentials of another environment than the client",
            ));
        }
        Ok(Self {
            environment,
            provider,
            tenants,
            policy,
        })
    }

    /// Sends `request` for `target`: the response and the credential it was sent with.
    ///
    /// Returns an error for refused guards, a missing credential, a final 401, a 403, a
    /// redirect, or a transport failure; other statuses (including a 429 or 5xx that outlasted
    /// the retries) come back as responses.
    #[tracing::instrument(
        name = "pleo_request",
        skip_all,
        fields(method = %request.method(), path = %request.url().path())
    )]
    pub(crate) async fn execute(
        &self,
        mut request: reqwest::Request,
        target: Option<&Target>,
        options: &RequestOptions,
        hop: &mut Hop<'_>,
    ) -> Result<(reqwest::Response, Arc<Credential>), Failure> {
        let started = Instant::now();
        let deadline = self.policy.deadline().map(|d| started + d);
        let target = target.ok_or_else(|| {
            refused(
                ErrorKind::InvalidInput,
                "the request names no company, organisation or tenant",
            )
        })?;
        let resolved = within(deadline, self.resolve(target), past_deadline).await?;
        self.prepare(&mut request, resolved)?;
        let may_retry = options.retry_non_idempotent || is_idempotent(request.method());
        let mut replay = Replay::new(request);
        let mut retries = 0u32;
        let mut auth_retried = false;

        loop {
            let mut request = replay.next()?;
            let credential = within(deadline, self.credential(resolved), past_deadline).await?;
            request.headers_mut().insert(
                AUTHORIZATION,
                sensitive_header(&credential.header)
                    .map_err(|e| Error::wrap(e, "the credential cannot be sent as a header"))?,
            );
            let sent_url = request.url().clone();
            let outcome = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, hop.send(request))
                    .await
                    .unwrap_or_else(|_| {
                        Err(SendFailure {
                            nothing_sent: false,
                            failure: refused(ErrorKind::Unavailable, "the call's deadline passed")
                                .into(),
                        })
                    }),
                None => hop.send(request).await,
            };

            let response = match outcome {
                Ok(response) => response,
                Err(failure) => {
                    let allowed = (failure.nothing_sent || may_retry) && replay.replayable;
                    match self.next_delay(allowed, retries, None, deadline) {
                        Some(delay) => {
                            retries += 1;
                            tracing::debug!(
                                retry = retries,
                                delay_ms = delay.as_millis() as u64,
                                error = %failure.failure.error,
                                "retrying after a transport failure"
                            );
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        None => return Err(failure.failure),
                    }
                }
            };
            if response.url() != &sent_url {
                return Err(refused(
                    ErrorKind::Config,
                    "the HTTP client followed a redirect; build it with redirect::Policy::none()",
                )
                .into());
            }

            let status = response.status();
            match status.as_u16() {
                401 => {
                    let answer =
                        status_error(response, &options.required_scopes, &secrets(&credential))
                            .await;
                    tracing::debug!(
                        credential = %credential.id,
                        subject = %resolved.subject,
                        "the API rejected the credential"
                    );
                    let verdict = within(
                        deadline,
                        self.provider.rejected(&resolved.subject, &credential.id),
                        || pleo_auth_core::Error::unavailable("the call's deadline passed"),
                    )
                    .await;
                    match verdict {
                        Ok(true) if !auth_retried && replay.replayable => {
                            auth_retried = true;
                            continue;
                        }
                        Ok(_) => {
                            let message = if auth_retried {
                                "the API rejected the replacement credential too"
                            } else {
                                "the API rejected the credential"
                            };
                            return Err(Error::new(ErrorKind::Unauthenticated, message)
                                .with_status(401)
                                .with_server_message(answer.server_message().map(str::to_owned))
                                .into());
                        }
                        Err(e) => {
                            return Err(Error::wrap(
                                e,
                                "the API rejected the credential and the provider cannot replace it",
                            )
                            .with_status(401)
                            .with_server_message(answer.server_message().map(str::to_owned))
                            .into());
                        }
                    }
                }
                403 => {
                    return Err(status_error(
                        response,
                        &options.required_scopes,
                        &secrets(&credential),
                    )
                    .await
                    .into());
                }
                300..=399 => {
                    return Err(refused(
                        ErrorKind::Unexpected,
                        "the API answered with a redirect, which is never followed",
                    )
                    .with_status(status.as_u16())
                    .into());
                }
                429 | 502 | 503 | 504 => {
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                    let allowed = may_retry && replay.replayable;
                    match self.next_delay(allowed, retries, retry_after, deadline) {
                        Some(delay) => {
                            retries += 1;
                            tracing::debug!(
                                retry = retries,
                                status = status.as_u16(),
                                delay_ms = delay.as_millis() as u64,
                                "retrying after a transient answer"
                            );
                            drop(response);
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        None => return Ok((response, credential)),
                    }
                }
                _ => return Ok((response, credential)),
            }
        }
    }

    /// The wait before the next transient retry, if one is allowed and fits the deadline.
    fn next_delay(
        &self,
        allowed: bool,
        retries_done: u32,
        retry_after: Option<std::time::Duration>,
        deadline: Option<Instant>,
    ) -> Option<std::time::Duration> {
        if !allowed || retries_done + 1 >= self.policy.max_attempts() {
            return None;
        }
        let delay = self.policy.delay(retries_done + 1, retry_after)?;
        match deadline {
            Some(deadline) if Instant::now() + delay >= deadline => None,
            _ => Some(delay),
        }
    }

    /// Who the request is for: the credential subject and the company.
    async fn resolve(&self, target: &Target) -> Result<Resolved> {
        match (&target.tenant, target.organisation, target.company) {
            (Some(_), Some(_), _) => Err(refused(
                ErrorKind::InvalidInput,
                "a request names either a tenant or an organisation, not both",
            )),
            (Some(tenant), None, company) => {
                let links = self.tenants.as_ref().ok_or_else(|| {
                    refused(
                        ErrorKind::Config,
                        "requests for a tenant need tenant links on the client builder",
                    )
                })?;
                let link = links
                    .subject_for(self.environment.name(), tenant)
                    .await
                    .map_err(|e| Error::wrap(e, "reading the tenant link failed"))?
                    .ok_or_else(|| {
                        refused(
                            ErrorKind::NotFound,
                            "the tenant is not linked to a Pleo company or organisation in this environment",
                        )
                    })?;
                match (link.subject, company) {
                    (Subject::Company(linked), None) => Ok(Resolved {
                        subject: link.subject,
                        company: linked,
                    }),
                    (Subject::Company(linked), Some(named)) if named == linked => Ok(Resolved {
                        subject: link.subject,
                        company: linked,
                    }),
                    (Subject::Company(_), Some(_)) => Err(refused(
                        ErrorKind::WrongCompany,
                        "the request names another company than the one the tenant is linked to",
                    )),
                    (Subject::Organisation(_), Some(named)) => Ok(Resolved {
                        subject: link.subject,
                        company: named,
                    }),
                    (Subject::Organisation(_), None) => Err(refused(
                        ErrorKind::InvalidInput,
                        "the tenant is linked to an organisation; name the company explicitly",
                    )),
                }
            }
            (None, Some(organisation), Some(company)) => Ok(Resolved {
                subject: Subject::Organisation(organisation),
                company,
            }),
            (None, Some(_), None) => Err(refused(
                ErrorKind::InvalidInput,
                "an organisation credential is used only with an explicit company",
            )),
            (None, None, Some(company)) => Ok(Resolved {
                subject: Subject::Company(company),
                company,
            }),
            (None, None, None) => Err(refused(
                ErrorKind::InvalidInput,
                "the request names no company, organisation or tenant",
            )),
        }
    }

    /// The environment guard on the URL, `company_id`, and no caller-set `Authorization`.
    fn prepare(&self, request: &mut reqwest::Request, resolved: Resolved) -> Result<()> {
        if request.headers().contains_key(AUTHORIZATION) {
            return Err(refused(
                ErrorKind::InvalidInput,
                "the request already has an Authorization header; the credential provider sets it",
            ));
        }
        let url = request.url_mut();
        if !self.environment.is_api_url(url) {
            return Err(refused(
                ErrorKind::WrongEnvironment,
                "the request's URL is not on the environment's API host; no credential is sent there",
            ));
        }
        check_transport_security(url)
            .map_err(|e| Error::wrap(e, "the request's URL is refused"))?;
        let company = resolved.company.to_string();
        let mut named = 0usize;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "company_id" => {
                    named += 1;
                    if value != company {
                        return Err(refused(
                            ErrorKind::WrongCompany,
                            "the request's company_id names another company than the request is for",
                        ));
                    }
                }
                "organization_id" | "organisation_id" => {
                    if let Subject::Organisation(org) = resolved.subject
                        && value != org.to_string()
                    {
                        return Err(refused(
                            ErrorKind::WrongCompany,
                            "the request's organization_id names another organisation than the credential's",
                        ));
                    }
                }
                _ => {}
            }
        }
        match named {
            0 => {
                url.query_pairs_mut().append_pair("company_id", &company);
                Ok(())
            }
            1 => Ok(()),
            _ => Err(refused(
                ErrorKind::InvalidInput,
                "the request repeats company_id",
            )),
        }
    }

    /// The provider's credential for the subject, checked against the subject and environment.
    async fn credential(&self, resolved: Resolved) -> Result<Arc<Credential>> {
        let credential = self
            .provider
            .credential_for(&resolved.subject)
            .await
            .map_err(|e| {
                Error::wrap(
                    e,
                    "the credential provider has no usable credential for the request's subject",
                )
            })?;
        if credential.subject != resolved.subject {
            tracing::warn!(
                requested = %resolved.subject,
                returned = %credential.subject,
                "refused a credential of another subject"
            );
            return Err(refused(
                ErrorKind::WrongCompany,
                "the credential provider returned a credential of another company or organisation; nothing was sent",
            ));
        }
        if credential.environment != *self.environment.name() {
            tracing::warn!(
                expected = %self.environment.name(),
                returned = %credential.environment,
                "refused a credential of another environment"
            );
            return Err(refused(
                ErrorKind::WrongEnvironment,
                "the credential provider returned a credential of another environment; nothing was sent",
            ));
        }
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_cover_the_header_and_the_token() {
        let header = pleo_auth_core::AuthorizationHeader::new("Bearer CANARY-x");
        let credential = Credential {
            id: pleo_auth_core::CredentialId::next(),
            header,
            subject: "urn:pleo:company:0c000000-0000-4000-8000-000000000001"
                .parse()
                .unwrap(),
            environment: pleo_auth_core::EnvironmentName::new("sandbox").unwrap(),
            scopes: pleo_auth_core::ScopeSet::new(),
            kind: pleo_auth_core::CredentialKind::OAuth,
        };
        assert_eq!(secrets(&credential), ["Bearer CANARY-x", "CANARY-x"]);
    }
}
