//! The token-response rewrite hook: property tests replace what the token endpoint sends after
//! the grant was already rotated.

use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A successful token response, as the sandbox was about to send it. The grant was already
/// issued or rotated server-side: the tokens in `body` are the live ones, and every earlier
/// refresh token of the grant is spent.
///
/// `Debug` does not print the body (it holds the tokens).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedTokenResponse {
    /// `authorization_code` or `refresh_token`.
    pub grant_type: String,
    /// The grant, as in [`Stats::grants`](crate::Stats::grants).
    pub grant_id: String,
    /// The JSON body, shaped by the current [`ServerShape`](crate::ServerShape).
    pub body: Value,
}

impl fmt::Debug for IssuedTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedTokenResponse")
            .field("grant_type", &self.grant_type)
            .field("grant_id", &self.grant_id)
            .finish_non_exhaustive()
    }
}

/// What the token endpoint sends instead of an [`IssuedTokenResponse`]: any status, content
/// type and bytes, valid or not.
///
/// A status outside 200 to 599, or a content type that cannot be a header value, is answered
/// with 500 and a plain-text explanation instead, so a test notices its own mistake.
///
/// `Debug` does not print the body.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponseReplacement {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header; `None` sends none.
    pub content_type: Option<String>,
    /// The body, sent as is.
    pub body: Vec<u8>,
}

impl fmt::Debug for TokenResponseReplacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponseReplacement")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl TokenResponseReplacement {
    /// Any status, content type and body.
    pub fn new(status: u16, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: content_type.map(str::to_owned),
            body: body.into(),
        }
    }

    /// 200 with `Content-Type: application/json` and `body` serialised.
    pub fn json(body: &Value) -> Self {
        Self::new(200, Some("application/json"), body.to_string())
    }

    pub(crate) fn into_response(self) -> Response {
        let refused = |why: String| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the token response rewrite is unusable: {why}"),
            )
                .into_response()
        };
        let status = match StatusCode::from_u16(self.status) {
            Ok(s) if (200..=599).contains(&self.status) => s,
            _ => return refused(format!("status {} is not 200 to 599", self.status)),
        };
        let content_type = match self.content_type.as_deref().map(HeaderValue::from_str) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => return refused("the content type is not a header value".to_owned()),
        };
        let mut response = (status, self.body).into_response();
        let h = response.headers_mut();
        h.remove(header::CONTENT_TYPE);
        if let Some(v) = content_type {
            h.insert(header::CONTENT_TYPE, v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A token-response rewrite hook; see
/// [`SandboxHandle::set_token_response_rewrite`](crate::SandboxHandle::set_token_response_rewrite).
pub type TokenResponseRewrite =
    Arc<dyn Fn(IssuedTokenResponse) -> TokenResponseReplacement + Send + Sync>;

/// The hook slot in the sandbox state, with a `Debug` that names only whether it is set.
#[derive(Clone, Default)]
pub(crate) struct RewriteSlot(pub(crate) Option<TokenResponseRewrite>);

impl fmt::Debug for RewriteSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "RewriteSlot(set)"
        } else {
            "RewriteSlot(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_bodies() {
        let issued = IssuedTokenResponse {
            grant_type: "refresh_token".to_owned(),
            grant_id: "grant-000001".to_owned(),
            body: serde_json::json!({ "access_token": "CANARY-at" }),
        };
        assert!(!format!("{issued:?}").contains("CANARY"));
        let replacement = TokenResponseReplacement::json(&issued.body);
        assert!(!format!("{replacement:?}").contains("CANARY"));
    }

    #[test]
    fn unusable_replacements_become_500() {
        for bad in [
            TokenResponseReplacement::new(102, None, "x"),
            TokenResponseReplacement::new(700, None, "x"),
            TokenResponseReplacement::new(200, Some("text/plain\n"), "x"),
        ] {
            assert_eq!(
                bad.into_response().status(),
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
        let plain = TokenResponseReplacement::new(200, None, "x").into_response();
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(plain.headers().get(header::CONTENT_TYPE).is_none());
    }
}
