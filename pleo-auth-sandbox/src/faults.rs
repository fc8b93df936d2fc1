//! Fault injection: the next N requests to an endpoint class fail in a chosen way.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shape::ServerShape;

/// A class of endpoints that faults can target. The authorization-server classes follow the
/// current [`ServerShape`]'s paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// The token endpoint (`POST /oauth/token` in Pleo's shape).
    Token,
    /// The token introspection endpoint (`POST /oauth/token/introspect` in Pleo's shape).
    Introspect,
    /// The External API: every path under `/v1/` and `/v2/` (including `/v1/introspect`).
    Api,
    /// The authorization endpoint, `GET` and `POST` (`/oauth/authorize` in Pleo's shape).
    Authorize,
    /// The token revocation endpoint (RFC 7009), when the shape has one.
    Revocation,
    /// Every path except the `/_sandbox/` administration paths. Endpoint-specific faults are
    /// served first; `Any` faults apply when none is queued for the request's endpoint.
    Any,
}

impl Endpoint {
    /// The class of a request path under `shape`; `None` for `/_sandbox/` paths, which are
    /// never faulted.
    pub(crate) fn classify(path: &str, shape: &ServerShape) -> Option<Self> {
        match path {
            p if p == shape.token_path => Some(Self::Token),
            p if p == shape.introspection_path => Some(Self::Introspect),
            p if p == shape.authorize_path => Some(Self::Authorize),
            p if shape.revocation_path.as_deref() == Some(p) => Some(Self::Revocation),
            p if p == "/_sandbox" || p.starts_with("/_sandbox/") => None,
            p if p.starts_with("/v1/") || p.starts_with("/v2/") => Some(Self::Api),
            _ => Some(Self::Any),
        }
    }
}

/// A failure to serve instead of (or before) the real answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 with `Retry-After: <retry_after_secs>`.
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// An HTTP 5xx status (500 to 599).
    ServerError(u16),
    /// Wait this long (real time), then answer normally.
    Delay(Duration),
    /// Close the connection without sending any response.
    DropConnection,
    /// HTTP 401 without looking at the credential, as a proxy or gateway in front of the API
    /// answers (the credential itself stays valid).
    Unauthorized,
}

/// Queued faults per endpoint class.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue(HashMap<Endpoint, VecDeque<(Fault, u32)>>);

impl FaultQueue {
    pub(crate) fn push(&mut self, endpoint: Endpoint, fault: Fault, count: u32) {
        if count > 0 {
            self.0
                .entry(endpoint)
                .or_default()
                .push_back((fault, count));
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// Takes one fault for a request of class `endpoint`.
    pub(crate) fn take(&mut self, endpoint: Endpoint) -> Option<Fault> {
        self.take_from(endpoint)
            .or_else(|| self.take_from(Endpoint::Any))
    }

    fn take_from(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let queue = self.0.get_mut(&endpoint)?;
        let (fault, remaining) = queue.front_mut()?;
        let fault = *fault;
        *remaining -= 1;
        if *remaining == 0 {
            queue.pop_front();
        }
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        let pleo = ServerShape::pleo();
        let classify = |p| Endpoint::classify(p, &pleo);
        assert_eq!(classify("/oauth/token"), Some(Endpoint::Token));
        assert_eq!(
            classify("/oauth/token/introspect"),
            Some(Endpoint::Introspect)
        );
        assert_eq!(classify("/v1/introspect"), Some(Endpoint::Api));
        assert_eq!(classify("/v2/employees"), Some(Endpoint::Api));
        assert_eq!(classify("/oauth/authorize"), Some(Endpoint::Authorize));
        assert_eq!(classify("/_sandbox/stats"), None);
        assert_eq!(classify("/"), Some(Endpoint::Any));
        assert_eq!(classify("/revoke"), Some(Endpoint::Any));
    }

    #[test]
    fn paths_follow_the_shape() {
        let generic = ServerShape::generic();
        let classify = |p| Endpoint::classify(p, &generic);
        assert_eq!(classify("/token"), Some(Endpoint::Token));
        assert_eq!(classify("/introspect"), Some(Endpoint::Introspect));
        assert_eq!(classify("/authorize"), Some(Endpoint::Authorize));
        assert_eq!(classify("/revoke"), Some(Endpoint::Revocation));
        assert_eq!(classify("/oauth/token"), Some(Endpoint::Any));
    }

    #[test]
    fn queue_serves_specific_faults_before_any_and_counts_down() {
        let mut q = FaultQueue::default();
        q.push(Endpoint::Any, Fault::DropConnection, 1);
        q.push(Endpoint::Token, Fault::ServerError(503), 2);
        q.push(Endpoint::Token, Fault::ServerError(0), 0);
        assert_eq!(q.take(Endpoint::Token), Some(Fault::ServerError(503)));
        assert_eq!(q.take(Endpoint::Token), Some(Fault::ServerError(503)));
        assert_eq!(q.take(Endpoint::Token), Some(Fault::DropConnection));
        assert_eq!(q.take(Endpoint::Token), None);
        assert_eq!(q.take(Endpoint::Api), None);
    }
}
