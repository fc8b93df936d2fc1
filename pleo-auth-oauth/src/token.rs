//! Token endpoint calls through the `oauth2` crate, carried by the shared reqwest client.
//!
//! The `oauth2` crate builds the requests (`client_secret_basic`, PKCE verifier, redirect URI)
//! and parses the answers; [`PleoHttp`] sends them with pleo-auth's one HTTP client, which never
//! follows redirects and caps response bodies. It also remembers the status and `Retry-After` of
//! the answer, which `oauth2` does not report. Errors from `oauth2` are never attached as
//! sources: its parse errors carry the raw response body, which may hold tokens.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, RequestTokenError,
    StandardRevocableToken, TokenResponse,
};
use pleo_auth_core::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, Environment, PkceVerifier,
    RefreshToken, ScopeSet,
};
use pleo_auth_http::transport::{
    DEFAULT_MAX_BODY_BYTES, parse_retry_after, read_body_capped, transport_error,
};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// A token response as Pleo sends it. Unlike `oauth2`'s standard response, a missing
/// `token_type` is read as `Bearer` (Pleo's documentation does not list the field).
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct PleoTokenResponse {
    access_token: oauth2::AccessToken,
    #[serde(
        default = "bearer",
        deserialize_with = "oauth2::helpers::deserialize_untagged_enum_case_insensitive"
    )]
    token_type: BasicTokenType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<oauth2::RefreshToken>,
    #[serde(
        rename = "scope",
        default,
        deserialize_with = "oauth2::helpers::deserialize_space_delimited_vec",
        serialize_with = "oauth2::helpers::serialize_space_delimited_vec",
        skip_serializing_if = "Option::is_none"
    )]
    scopes: Option<Vec<oauth2::Scope>>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

impl TokenResponse for PleoTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &oauth2::AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }

    fn refresh_token(&self) -> Option<&oauth2::RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<oauth2::Scope>> {
        self.scopes.as_ref()
    }
}

/// The `oauth2` client for Pleo: authorization and token endpoints set, Basic client auth.
pub(crate) type OAuth2Client = oauth2::Client<
    BasicErrorResponse,
    PleoTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Builds the `oauth2` client for an environment and client.
pub(crate) fn oauth2_client(
    environment: &Environment,
    client_id: &ClientId,
    secret: &ClientSecret,
) -> OAuth2Client {
    oauth2::Client::new(oauth2::ClientId::new(client_id.as_str().to_owned()))
        .set_client_secret(oauth2::ClientSecret::new(secret.expose_secret().to_owned()))
        .set_auth_type(oauth2::AuthType::BasicAuth)
        .set_auth_uri(oauth2::AuthUrl::from_url(environment.authorize_endpoint()))
        .set_token_uri(oauth2::TokenUrl::from_url(environment.token_endpoint()))
}

/// Tokens from a successful token response.
pub(crate) struct Tokens {
    pub(crate) access_token: AccessToken,
    pub(crate) refresh_token: Option<RefreshToken>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scopes: Option<ScopeSet>,
}

impl Tokens {
    fn from_response(response: PleoTokenResponse) -> Result<Self> {
        if response.token_type != BasicTokenType::Bearer {
            return Err(Error::unexpected(
                "the token response is not a bearer token",
            ));
        }
        let scopes = match response.scopes {
            Some(list) => Some(
                list.iter()
                    .map(|s| s.as_str().parse())
                    .collect::<pleo_auth_core::Result<ScopeSet>>()
                    .map_err(|_| Error::unexpected("the token response has invalid scopes"))?,
            ),
            None => None,
        };
        if response.access_token.secret().is_empty() {
            return Err(Error::unexpected(
                "the token response has an empty access token",
            ));
        }
        Ok(Self {
            access_token: AccessToken::new(response.access_token.secret().as_str()),
            refresh_token: response
                .refresh_token
                .filter(|t| !t.secret().is_empty())
                .map(|t| RefreshToken::new(t.secret().as_str())),
            expires_in: response.expires_in.map(Duration::from_secs),
            scopes,
        })
    }
}

/// Status and `Retry-After` of the last answer.
#[derive(Debug, Clone, Copy, Default)]
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
}

/// `oauth2`'s async HTTP client interface over the shared reqwest client.
pub(crate) struct PleoHttp<'a> {
    client: &'a reqwest::Client,
    now: SystemTime,
    answer: Mutex<Option<Answer>>,
}

impl<'a> PleoHttp<'a> {
    /// A client for one token request; `now` is the wall-clock time for `Retry-After` dates.
    pub(crate) fn new(client: &'a reqwest::Client, now: SystemTime) -> Self {
        Self {
            client,
            now,
            answer: Mutex::new(None),
        }
    }

    fn answer(&self) -> Option<Answer> {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, pleo_auth_core::Error> {
        let mut request = reqwest::Request::try_from(request).map_err(|_| {
            pleo_auth_core::Error::new(
                pleo_auth_core::ErrorKind::Unexpected,
                "the token request could not be built",
            )
        })?;
        if let Some(value) = request.headers_mut().get_mut(AUTHORIZATION) {
            value.set_sensitive(true);
        }
        let response = self
            .client
            .execute(request)
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.now));
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Answer {
            status: status.as_u16(),
            retry_after,
        });
        let mut builder = oauth2::http::Response::builder().status(status);
        if let Some(content_type) = response.headers().get(reqwest::header::CONTENT_TYPE) {
            builder = builder.header(reqwest::header::CONTENT_TYPE, content_type.clone());
        }
        let body = read_body_capped(response, DEFAULT_MAX_BODY_BYTES).await?;
        builder.body(body.to_vec()).map_err(|_| {
            pleo_auth_core::Error::new(
                pleo_auth_core::ErrorKind::Unexpected,
                "the token response could not be read",
            )
        })
    }
}

impl<'c> AsyncHttpClient<'c> for PleoHttp<'_> {
    type Error = pleo_auth_core::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse, pleo_auth_core::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

type TokenError = RequestTokenError<pleo_auth_core::Error, BasicErrorResponse>;

/// What a failed token request means.
fn classify(err: TokenError, answer: Option<Answer>, exchanging_code: bool) -> Error {
    if let Some(answer) = answer {
        match answer.status {
            429 => {
                return Error::new(
                    ErrorKind::RateLimited {
                        retry_after: answer.retry_after,
                    },
                    "the token endpoint asked to slow down",
                );
            }
            408 | 500..=599 => {
                return Error::new(
                    ErrorKind::Unavailable,
                    "the token endpoint is temporarily unavailable",
                );
            }
            _ => {}
        }
    }
    match err {
        RequestTokenError::ServerResponse(response) => {
            let code = response.error();
            match code {
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => Error::new(
                    ErrorKind::InvalidClient,
                    "pleo refused the client credentials",
                ),
                BasicErrorResponseType::InvalidGrant if !exchanging_code => Error::new(
                    ErrorKind::NeedsReauthorization,
                    "pleo refused the refresh token",
                ),
                BasicErrorResponseType::Extension(ext)
                    if ext == "temporarily_unavailable" || ext == "server_error" =>
                {
                    Error::new(
                        ErrorKind::Unavailable,
                        "the token endpoint is temporarily unavailable",
                    )
                }
                other if exchanging_code => Error::new(
                    ErrorKind::CodeRejected {
                        code: crate::error::sanitize(other.as_ref()),
                    },
                    "pleo refused the authorization code",
                ),
                _ => Error::unexpected("pleo refused the refresh request"),
            }
        }
        RequestTokenError::Request(e) => {
            let kind = if e.is_retryable() {
                ErrorKind::Unavailable
            } else {
                ErrorKind::UnexpectedResponse
            };
            Error::new(kind, "the token request failed").with_source(e)
        }
        RequestTokenError::Parse(..) => Error::unexpected("the token response is malformed"),
        RequestTokenError::Other(_) => Error::unexpected("the token response is not usable"),
    }
}

/// Exchanges an authorization code (with its PKCE verifier and redirect URI) for tokens.
pub(crate) async fn exchange_code(
    oauth: &OAuth2Client,
    http: &reqwest::Client,
    now: SystemTime,
    code: &AuthorizationCode,
    verifier: &PkceVerifier,
    redirect_uri: &str,
) -> Result<Tokens> {
    let redirect = oauth2::RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|_| Error::unexpected("the stored redirect uri is not a url"))?;
    let client = PleoHttp::new(http, now);
    let result = oauth
        .exchange_code(oauth2::AuthorizationCode::new(
            code.expose_secret().to_owned(),
        ))
        .set_pkce_verifier(oauth2::PkceCodeVerifier::new(
            verifier.expose_secret().to_owned(),
        ))
        .set_redirect_uri(Cow::Owned(redirect))
        .request_async(&client)
        .await;
    match result {
        Ok(response) => Tokens::from_response(response),
        Err(err) => Err(classify(err, client.answer(), true)),
    }
}

/// Sends one refresh request.
pub(crate) async fn refresh(
    oauth: &OAuth2Client,
    http: &reqwest::Client,
    now: SystemTime,
    refresh_token: &RefreshToken,
) -> Result<Tokens> {
    let client = PleoHttp::new(http, now);
    let token = oauth2::RefreshToken::new(refresh_token.expose_secret().to_owned());
    let result = oauth
        .exchange_refresh_token(&token)
        .request_async(&client)
        .await;
    match result {
        Ok(response) => Tokens::from_response(response),
        Err(err) => Err(classify(err, client.answer(), false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Tokens> {
        Tokens::from_response(serde_json::from_str(json).expect("valid json"))
    }

    #[test]
    fn token_responses_are_read_leniently_but_checked() {
        let t = parse(
            r#"{"access_token":"a","refresh_token":"r","expires_in":900,"scope":"users:read"}"#,
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "a");
        assert_eq!(t.expires_in, Some(Duration::from_secs(900)));
        assert_eq!(t.scopes.unwrap().to_string(), "users:read");
        assert!(parse(r#"{"access_token":"a","token_type":"BEARER"}"#).is_ok());
        assert!(parse(r#"{"access_token":"a","token_type":"mac"}"#).is_err());
        assert!(parse(r#"{"access_token":""}"#).is_err());
        assert!(parse(r#"{"access_token":"a","scope":"NOT A SCOPE"}"#).is_err());
    }

    #[test]
    fn errors_are_classified_by_status_first() {
        let server = |code: BasicErrorResponseType| {
            RequestTokenError::ServerResponse(BasicErrorResponse::new(code, None, None))
        };
        let limited = classify(
            server(BasicErrorResponseType::Extension("x".into())),
            Some(Answer {
                status: 429,
                retry_after: Some(Duration::from_secs(7)),
            }),
            false,
        );
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        let invalid_grant = classify(
            server(BasicErrorResponseType::InvalidGrant),
            Some(Answer {
                status: 400,
                retry_after: None,
            }),
            false,
        );
        assert_eq!(invalid_grant.kind(), &ErrorKind::NeedsReauthorization);
        let code_rejected = classify(server(BasicErrorResponseType::InvalidGrant), None, true);
        assert_eq!(
            code_rejected.kind(),
            &ErrorKind::CodeRejected {
                code: "invalid_grant".into()
            }
        );
        let client = classify(server(BasicErrorResponseType::InvalidClient), None, false);
        assert_eq!(client.kind(), &ErrorKind::InvalidClient);
        let unavailable = classify(
            RequestTokenError::Other("x".into()),
            Some(Answer {
                status: 503,
                retry_after: None,
            }),
            false,
        );
        assert!(unavailable.is_retryable());
    }
}
