//! The one way pleo-auth talks HTTP: no redirects, bounded time, capped bodies.
//!
//! The OAuth and API key crates use [`http_client`] for token, introspection and installation
//! calls, and [`PleoClient`](crate::PleoClient) builds on it for API requests.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use pleo_auth_core::{Error, ErrorKind, Result};
use reqwest::StatusCode;

/// Largest response body read from Pleo for token, introspection and error responses.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// Settings of the HTTP client shared by every pleo-auth call.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Time allowed for a whole request, from connect to the last body byte.
    pub timeout: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("pleo-auth/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// A reqwest client that never follows redirects (so no credential or body reaches a second
/// listener), uses rustls, and applies the configured timeouts.
pub fn http_client(config: &TransportConfig) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.connect_timeout)
        .user_agent(config.user_agent.clone())
        .https_only(false)
        .build()
        .map_err(|e| {
            Error::new(ErrorKind::Config, "building the HTTP client failed").with_source(e)
        })
}

/// Reads a response body, refusing bodies larger than `limit` bytes without reading them whole.
pub async fn read_body_capped(mut response: reqwest::Response, limit: usize) -> Result<Bytes> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(body_too_large(limit));
    }
    // Most bodies arrive in one chunk, which is returned as it is, without a copy.
    let Some(first) = response.chunk().await.map_err(transport_error)? else {
        return Ok(Bytes::new());
    };
    if first.len() > limit {
        return Err(body_too_large(limit));
    }
    let Some(second) = response.chunk().await.map_err(transport_error)? else {
        return Ok(first);
    };
    let mut body = BytesMut::from(first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        if body.len() + chunk.len() > limit {
            return Err(body_too_large(limit));
        }
        body.extend_from_slice(&chunk);
        next = response.chunk().await.map_err(transport_error)?;
    }
    Ok(body.freeze())
}

fn body_too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("response body is larger than {limit} bytes"),
    )
}

/// Converts a reqwest error into a core error without the URL (which may carry a query).
pub fn transport_error(err: reqwest::Error) -> Error {
    let kind = transport_error_kind(&err);
    let message = if err.is_timeout() {
        "request timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    Error::new(kind, message).with_source(err.without_url())
}

/// The error kind of a reqwest error: [`ErrorKind::Unavailable`] for timeouts, connection,
/// request and body failures, [`ErrorKind::Unexpected`] for anything else.
pub fn transport_error_kind(err: &reqwest::Error) -> ErrorKind {
    if err.is_timeout() || err.is_connect() || err.is_request() || err.is_body() {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Unexpected
    }
}

/// The error kind that an unexpected HTTP status maps to.
pub fn status_kind(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        408 | 500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Unexpected,
    }
}

/// Parses a `Retry-After` header value (RFC 9110 §10.2.3): delay-seconds, or an HTTP date in any
/// of the three formats of RFC 9110 §5.6.7 (IMF-fixdate, and the obsolete RFC 850 and asctime
/// forms). Returns `None` for anything else; dates in the past give zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_dates_in_each_rfc_9110_format() {
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        for (format, later, earlier) in [
            (
                "IMF-fixdate",
                "Sun, 06 Nov 1994 08:50:37 GMT",
                "Sun, 06 Nov 1994 08:48:37 GMT",
            ),
            (
                "RFC 850",
                "Sunday, 06-Nov-94 08:50:37 GMT",
                "Sunday, 06-Nov-94 08:48:37 GMT",
            ),
            (
                "asctime",
                "Sun Nov  6 08:50:37 1994",
                "Sun Nov  6 08:48:37 1994",
            ),
        ] {
            assert_eq!(
                parse_retry_after(later, now),
                Some(Duration::from_secs(60)),
                "{format}: {later}"
            );
            assert_eq!(
                parse_retry_after(&format!(" {later} "), now),
                Some(Duration::from_secs(60)),
                "{format} with whitespace around it"
            );
            assert_eq!(
                parse_retry_after(earlier, now),
                Some(Duration::ZERO),
                "{format}: a date in the past waits no more"
            );
        }
    }

    #[test]
    fn retry_after_garbage_is_none() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "99999999999",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37",
            "Sun Nov  6 08:49:37",
            "1994-11-06T08:49:37Z",
            // 29 bytes, but not ASCII.
            "!\u{d4a}\u{1df00}\u{1ee7e}\u{1da9b}\u{d12}\u{1ee80}AAa\u{ae}A",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(
            status_kind(StatusCode::UNAUTHORIZED),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            status_kind(StatusCode::FORBIDDEN),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            status_kind(StatusCode::TOO_MANY_REQUESTS),
            ErrorKind::RateLimited
        );
        assert_eq!(status_kind(StatusCode::BAD_GATEWAY), ErrorKind::Unavailable);
        assert_eq!(status_kind(StatusCode::BAD_REQUEST), ErrorKind::Unexpected);
    }

    /// A response served by a one-shot loopback server that writes `raw` as it is, in
    /// `pieces` writes with a pause between them (so chunked bodies arrive in several chunks).
    async fn served(pieces: Vec<Vec<u8>>) -> reqwest::Response {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await.unwrap();
            for piece in pieces {
                socket.write_all(&piece).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        http_client(&TransportConfig::default())
            .unwrap()
            .get(format!("http://{address}/"))
            .send()
            .await
            .unwrap()
    }

    fn chunked(chunks: &[&str]) -> Vec<Vec<u8>> {
        let mut pieces = vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()];
        for chunk in chunks {
            pieces.push(format!("{:x}\r\n{chunk}\r\n", chunk.len()).into_bytes());
        }
        pieces.push(b"0\r\n\r\n".to_vec());
        pieces
    }

    #[tokio::test]
    async fn capped_bodies_arrive_whole_or_are_refused() {
        let whole = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec();
        let body = read_body_capped(served(vec![whole]).await, 5)
            .await
            .unwrap();
        assert_eq!(&body[..], b"hello");

        let empty = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let body = read_body_capped(served(vec![empty]).await, 5)
            .await
            .unwrap();
        assert!(body.is_empty());

        let response = served(chunked(&["abc", "def", "gh"])).await;
        let body = read_body_capped(response, 8).await.unwrap();
        assert_eq!(&body[..], b"abcdefgh");

        // Declared too large: refused before reading.
        let declared = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello!".to_vec();
        let err = read_body_capped(served(vec![declared]).await, 5)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than 5 bytes"), "{err}");

        // Undeclared and too large, in the first chunk and across chunks.
        for chunks in [&["abcdef"][..], &["abc", "def"][..]] {
            let err = read_body_capped(served(chunked(chunks)).await, 5)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("larger than 5 bytes"),
                "{chunks:?}: {err}"
            );
        }
    }

    proptest! {
        #[test]
        fn retry_after_never_panics(s in "\\PC{0,40}") {
            let _ = parse_retry_after(&s, SystemTime::now());
        }
    }
}
