//! A one-shot loopback listener for the OAuth redirect of CLIs and desktop tools (RFC 8252 §7.3).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pleo_auth_core::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use url::{Host, Url};

use crate::error::{Error, Result};
use crate::pages::{self, SECURITY_HEADERS};

/// Largest request head read from the browser.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a connection may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 32;

/// Waits for the one browser request that ends an OAuth authorization on a loopback redirect
/// URI, answers it with a small page, and hands back the raw query string.
///
/// Only `http` redirect URIs on `127.0.0.1`, `[::1]` or `localhost` (bound as `127.0.0.1`) are
/// accepted. Without a port (or with port 0) an ephemeral port is chosen; read the final URI
/// from [`LoopbackCallback::redirect_uri`] and send that one in the authorization request. The
/// listener answers exactly one `GET` on the redirect path that carries an authorization
/// response (a `code` or an `error`, and the expected `state` when one was given with
/// [`LoopbackCallback::expect_state`]). Anything else does not use up the listener: other
/// paths (a favicon) get a 404, other methods (a `HEAD` prefetch) a 405, and a request on the
/// redirect path without an authorization response or with another `state` a 400. The pages
/// never reflect request input. Validating `state` fully and exchanging the code are the OAuth
/// crate's job.
///
/// ```no_run
/// use std::time::Duration;
/// use pleo_auth_http::LoopbackCallback;
///
/// # async fn run() -> Result<(), pleo_auth_http::Error> {
/// let callback = LoopbackCallback::bind("http://127.0.0.1/callback").await?;
/// let redirect_uri = callback.redirect_uri().clone();
/// // Open the authorization URL (with `redirect_uri`) in the browser, then:
/// let raw_query = callback.wait(Duration::from_secs(300)).await?;
/// # let _ = (redirect_uri, raw_query);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LoopbackCallback {
    listener: TcpListener,
    redirect_uri: Url,
    path: String,
    authority: String,
    state: Option<String>,
}

struct Shared {
    path: String,
    authority: String,
    /// The `state` the authorization response must carry, if known.
    state: Option<String>,
    consumed: AtomicBool,
}

/// What one browser request gets.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Callback(String),
    Status(u16, &'static str, (&'static str, &'static str)),
}

impl LoopbackCallback {
    /// Binds the listener for `redirect_uri`.
    ///
    /// Fails with [`InvalidInput`](ErrorKind::InvalidInput) for anything but an `http` URI on
    /// `127.0.0.1`, `[::1]` or `localhost` without user info, query or fragment, and with
    /// [`Unavailable`](ErrorKind::Unavailable) if the port cannot be bound.
    pub async fn bind(redirect_uri: &str) -> Result<Self> {
        let invalid = |m: &'static str| Error::new(ErrorKind::InvalidInput, m);
        let mut url =
            Url::parse(redirect_uri).map_err(|_| invalid("the redirect URI is not a URL"))?;
        if url.scheme() != "http" {
            return Err(invalid("a loopback redirect URI uses http"));
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(invalid(
                "a loopback redirect URI has no user info, query or fragment",
            ));
        }
        let ip: IpAddr = match url.host() {
            Some(Host::Ipv4(ip)) if ip == Ipv4Addr::LOCALHOST => ip.into(),
            Some(Host::Ipv6(ip)) if ip == Ipv6Addr::LOCALHOST => ip.into(),
            Some(Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                Ipv4Addr::LOCALHOST.into()
            }
            _ => {
                return Err(invalid(
                    "a loopback redirect URI's host is 127.0.0.1, [::1] or localhost",
                ));
            }
        };
        let listener = TcpListener::bind(SocketAddr::new(ip, url.port().unwrap_or(0)))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    "binding the loopback listener failed",
                )
                .with_source(e)
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    "reading the listener's address failed",
                )
                .with_source(e)
            })?
            .port();
        url.set_port(Some(port))
            .map_err(|()| invalid("the redirect URI cannot carry a port"))?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        Ok(Self {
            listener,
            authority: format!("{host}:{port}"),
            path: url.path().to_owned(),
            redirect_uri: url,
            state: None,
        })
    }

    /// Accepts only the authorization response that carries `state` (the one of the
    /// authorization request this listener waits for); a request with another or no `state`
    /// gets a 400 and leaves the listener waiting.
    #[must_use]
    pub fn expect_state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// The redirect URI to send in the authorization request, with the bound port.
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// Waits up to `timeout` for the redirect and returns its raw (still percent-encoded)
    /// query string. The browser sees a success page if the query has a `code` and no
    /// `error`, and a failure page otherwise; the query is returned either way.
    ///
    /// Fails with [`Unavailable`](ErrorKind::Unavailable) (not retryable) on timeout.
    pub async fn wait(self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let shared = Arc::new(Shared {
            path: self.path,
            authority: self.authority,
            state: self.state,
            consumed: AtomicBool::new(false),
        });
        let (tx, mut rx) = mpsc::channel::<String>(1);
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                Some(query) = rx.recv() => return Ok(query),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                        connections.spawn(serve(stream, shared.clone(), tx.clone(), deadline));
                    }
                    Ok(_) => tracing::debug!("loopback callback: too many connections, one closed"),
                    Err(e) => {
                        tracing::debug!(error = %e, "loopback callback: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "no OAuth callback arrived before the timeout",
                    )
                    .with_retryable(false));
                }
            }
        }
    }
}

/// Serves one connection: reads the head, routes it, answers, and reports a callback.
async fn serve(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    tx: mpsc::Sender<String>,
    deadline: Instant,
) {
    let read_deadline = deadline.min(Instant::now() + READ_TIMEOUT);
    let route = match tokio::time::timeout_at(read_deadline, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => route(&head, &shared),
        Ok(Ok(None)) => Route::Status(431, "Request Header Fields Too Large", pages::BAD_REQUEST),
        Ok(Err(_)) | Err(_) => return,
    };
    match route {
        Route::Callback(query) => {
            let page = if is_success(&query) {
                pages::RECEIVED
            } else {
                pages::FAILED
            };
            respond(&mut stream, 200, "OK", page).await;
            // The page is out before the listener is closed; a send error means `wait` ended.
            let _ = tx.send(query).await;
        }
        Route::Status(status, reason, page) => respond(&mut stream, status, reason, page).await,
    }
}

/// Reads the request head up to and including the blank line that ends it; `None` if it is too
/// long.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end + 4);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
    }
}

/// How many header lines a callback request may carry.
const MAX_HEADERS: usize = 64;

/// Decides what a request head (up to and including its blank line) gets.
fn route(head: &[u8], shared: &Shared) -> Route {
    let bad = Route::Status(400, "Bad Request", pages::BAD_REQUEST);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Route::Status(431, "Request Header Fields Too Large", pages::BAD_REQUEST);
        }
        Ok(httparse::Status::Partial) | Err(_) => return bad,
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return bad;
    };
    let mut hosts = request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("host"))
        .map(|header| std::str::from_utf8(header.value).map(str::trim));
    match (hosts.next(), hosts.next()) {
        (Some(Ok(host)), None) if host.eq_ignore_ascii_case(&shared.authority) => {}
        _ => return bad,
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != shared.path {
        return Route::Status(404, "Not Found", pages::NOT_FOUND);
    }
    if method != "GET" {
        return Route::Status(405, "Method Not Allowed", pages::BAD_REQUEST);
    }
    if !is_authorization_response(query, shared.state.as_deref()) {
        // A prefetch, a reload without parameters, a forged or stale redirect: not ours.
        return bad;
    }
    if shared.consumed.swap(true, Ordering::SeqCst) {
        return Route::Status(410, "Gone", pages::ALREADY_USED);
    }
    Route::Callback(query.to_owned())
}

/// Whether `query` is an authorization response: a `code` or an `error`, and `expected`'s
/// `state` when given (compared in constant time).
fn is_authorization_response(query: &str, expected: Option<&str>) -> bool {
    let mut response = false;
    let mut state = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "code" | "error" => response = true,
            "state" => state = Some(value),
            _ => {}
        }
    }
    match expected {
        None => response,
        Some(expected) => {
            response && state.is_some_and(|s| same(s.as_bytes(), expected.as_bytes()))
        }
    }
}

/// Byte equality in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the redirect carries a code and no error.
fn is_success(query: &str) -> bool {
    let mut code = false;
    for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "error" => return false,
            "code" => code = true,
            _ => {}
        }
    }
    code
}

async fn respond(stream: &mut TcpStream, status: u16, reason: &str, (title, text): (&str, &str)) {
    let body = pages::page(title, text);
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in SECURITY_HEADERS {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.push_str(&body);
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shared() -> Shared {
        Shared {
            path: "/callback".to_owned(),
            authority: "127.0.0.1:5000".to_owned(),
            state: None,
            consumed: AtomicBool::new(false),
        }
    }

    fn head(request_line: &str, host: &str) -> Vec<u8> {
        format!("{request_line}\r\nHost: {host}\r\nAccept: */*\r\n\r\n").into_bytes()
    }

    #[test]
    fn routes_one_get_on_the_path_only() {
        let s = shared();
        assert_eq!(
            route(&head("GET /other?code=x HTTP/1.1", "127.0.0.1:5000"), &s),
            Route::Status(404, "Not Found", pages::NOT_FOUND)
        );
        assert_eq!(
            route(
                &head("POST /callback?code=x HTTP/1.1", "127.0.0.1:5000"),
                &s
            ),
            Route::Status(405, "Method Not Allowed", pages::BAD_REQUEST)
        );
        assert_eq!(
            route(
                &head("GET /callback?code=x HTTP/1.1", "evil.example:5000"),
                &s
            ),
            Route::Status(400, "Bad Request", pages::BAD_REQUEST)
        );
        assert_eq!(
            route(
                &head("GET /callback?code=x&state=y HTTP/1.1", "127.0.0.1:5000"),
                &s
            ),
            Route::Callback("code=x&state=y".to_owned())
        );
        assert_eq!(
            route(&head("GET /callback?code=z HTTP/1.1", "127.0.0.1:5000"), &s),
            Route::Status(410, "Gone", pages::ALREADY_USED)
        );
    }

    #[test]
    fn stray_requests_do_not_use_up_the_listener() {
        let s = Shared {
            state: Some("expected-state".to_owned()),
            ..shared()
        };
        let bad = Route::Status(400, "Bad Request", pages::BAD_REQUEST);
        for stray in [
            head("GET /favicon.ico HTTP/1.1", "127.0.0.1:5000"),
            head(
                "HEAD /callback?code=x&state=expected-state HTTP/1.1",
                "127.0.0.1:5000",
            ),
            head("GET /callback HTTP/1.1", "127.0.0.1:5000"),
            head("GET /callback?foo=bar HTTP/1.1", "127.0.0.1:5000"),
            head("GET /callback?code=x HTTP/1.1", "127.0.0.1:5000"),
            head(
                "GET /callback?code=x&state=other-state HTTP/1.1",
                "127.0.0.1:5000",
            ),
            head(
                "GET /callback?code=x&state=expected-stat HTTP/1.1",
                "127.0.0.1:5000",
            ),
        ] {
            assert_ne!(
                route(&stray, &s),
                Route::Callback(String::new()),
                "{}",
                String::from_utf8_lossy(&stray)
            );
        }
        assert!(!s.consumed.load(Ordering::SeqCst), "nothing was consumed");
        assert_eq!(
            route(&head("GET /callback HTTP/1.1", "127.0.0.1:5000"), &s),
            bad
        );
        assert_eq!(
            route(
                &head(
                    "GET /callback?error=access_denied&state=expected-state HTTP/1.1",
                    "127.0.0.1:5000"
                ),
                &s
            ),
            Route::Callback("error=access_denied&state=expected-state".to_owned())
        );
    }

    #[tokio::test]
    async fn a_favicon_and_a_prefetch_before_the_redirect_change_nothing() {
        let callback = LoopbackCallback::bind("http://127.0.0.1/callback")
            .await
            .unwrap()
            .expect_state("s1");
        let base = callback.redirect_uri().clone();
        let waiting = tokio::spawn(callback.wait(Duration::from_secs(20)));
        let client = reqwest::Client::new();
        let favicon = client
            .get(base.join("/favicon.ico").unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(favicon.status(), 404);
        let bare = client.get(base.clone()).send().await.unwrap();
        assert_eq!(bare.status(), 400);
        let mut forged = base.clone();
        forged.set_query(Some("code=c&state=s2"));
        assert_eq!(client.get(forged).send().await.unwrap().status(), 400);
        let mut real = base.clone();
        real.set_query(Some("code=c&state=s1"));
        assert_eq!(client.get(real).send().await.unwrap().status(), 200);
        assert_eq!(waiting.await.unwrap().unwrap(), "code=c&state=s1");
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        let s = shared();
        for raw in [
            &b"GET /callback"[..],
            b"GET /callback HTTP/2",
            b"GET  /callback HTTP/1.1\r\nHost: 127.0.0.1:5000",
            b"\xff\xfe",
            b"GET /callback HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nHost: 127.0.0.1:5000",
            b"GET /callback HTTP/1.1\r\nHost: \xff",
            b"GET /callback HTTP/1.1\r\nBad Header: x",
        ] {
            let raw = [raw, b"\r\n\r\n"].concat();
            assert_eq!(
                route(&raw, &s),
                Route::Status(400, "Bad Request", pages::BAD_REQUEST),
                "{raw:?}"
            );
        }
        assert_eq!(
            route(b"GET /callback?code=x HTTP/1.1\r\nHost: 127.0.0.1:5000", &s),
            Route::Status(400, "Bad Request", pages::BAD_REQUEST),
            "a head without its blank line is incomplete"
        );
        let many = format!(
            "GET /callback?code=x HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n{}\r\n",
            "X-A: b\r\n".repeat(MAX_HEADERS)
        );
        assert_eq!(
            route(many.as_bytes(), &s),
            Route::Status(431, "Request Header Fields Too Large", pages::BAD_REQUEST)
        );
        assert!(!s.consumed.load(Ordering::SeqCst));
    }

    #[test]
    fn success_needs_a_code_and_no_error() {
        assert!(is_success("code=a&state=b"));
        assert!(!is_success("error=access_denied&state=b"));
        assert!(!is_success("code=a&error=x"));
        assert!(!is_success(""));
    }

    #[tokio::test]
    async fn only_loopback_http_redirect_uris_bind() {
        for bad in [
            "https://127.0.0.1/callback",
            "http://10.0.0.1/callback",
            "http://127.0.0.2/callback",
            "http://example.com/callback",
            "http://127.0.0.1/callback?x=1",
            "http://u:p@127.0.0.1/callback",
            "not a url",
        ] {
            let err = LoopbackCallback::bind(bad).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        let ok = LoopbackCallback::bind("http://localhost/cb").await.unwrap();
        assert_eq!(ok.redirect_uri().host_str(), Some("localhost"));
        assert_ne!(ok.redirect_uri().port(), None);
    }

    proptest! {
        #[test]
        fn routing_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = route(&raw, &shared());
        }
    }
}
