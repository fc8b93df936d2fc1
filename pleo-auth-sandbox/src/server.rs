//! The HTTP server: the listening socket, the routes, the fault-injection layer and the
//! connection loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use url::Url;
use uuid::Uuid;

use crate::config::{ClientRegistration, Config};
use crate::error::SandboxError;
use crate::faults::{Endpoint, Fault};
use crate::handle::SandboxHandle;
use crate::shape::ServerShape;
use crate::state::Shared;
use crate::{admin_http, api, oauth};

/// Binds the socket and spawns the server on the current Tokio runtime.
pub(crate) async fn start(
    config: Config,
    clients: Vec<ClientRegistration>,
    auto_approve: Option<Uuid>,
    shape: ServerShape,
    bind: SocketAddr,
    max_body_bytes: usize,
) -> Result<SandboxHandle, SandboxError> {
    let bind_error = |source| SandboxError::Bind { addr: bind, source };
    let socket = if bind.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(bind).map_err(bind_error)?;
    let listener = socket.listen(4096).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let base_url = Url::parse(&format!("http://{addr}/"))
        .map_err(|e| SandboxError::InvalidConfig(format!("cannot form a base URL: {e}")))?;
    let environment = config.environment_name.clone();
    let shared = Arc::new(Shared::new(config, base_url, clients, auto_approve, shape));
    let router = router(Arc::clone(&shared), max_body_bytes);
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(serve(listener, router, rx));
    tracing::info!(%addr, %environment, "pleo sandbox listening");
    Ok(SandboxHandle::new(shared, addr, tx, task))
}

fn router(shared: Arc<Shared>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/introspect", get(api::introspect))
        .route(
            "/v1/installations/me",
            get(api::installation)
                .post(api::installation)
                .put(api::installation)
                .delete(api::installation),
        )
        .route(
            "/v1/installations/me:activate",
            post(api::activate_installation),
        )
        .route("/v2/employees", get(api::employees))
        .route("/v1/vendors", get(api::vendors))
        .route(
            "/v1/export-jobs",
            get(api::list_export_jobs).post(api::create_export_job),
        )
        .route("/_sandbox/stats", get(admin_http::stats))
        .route("/_sandbox/stats/reset", post(admin_http::reset_stats))
        .route(
            "/_sandbox/requests",
            get(admin_http::requests).delete(admin_http::clear_requests),
        )
        .route("/_sandbox/api-keys", post(admin_http::mint_api_key))
        .route(
            "/_sandbox/api-keys/revoke",
            post(admin_http::revoke_api_key),
        )
        .route(
            "/_sandbox/faults",
            post(admin_http::inject_fault).delete(admin_http::clear_faults),
        )
        .route("/_sandbox/clock", get(admin_http::clock))
        .route("/_sandbox/clock/advance", post(admin_http::advance_clock))
        .route("/_sandbox/revoke", post(admin_http::revoke))
        .route("/_sandbox/grant-id", post(admin_http::grant_id))
        .route(
            "/_sandbox/auto-approve",
            axum::routing::put(admin_http::auto_approve),
        )
        .route("/_sandbox/clients", post(admin_http::register_client))
        .route("/_sandbox/seed", get(admin_http::seed))
        .route(
            "/_sandbox/server-shape",
            get(admin_http::server_shape).put(admin_http::set_server_shape),
        )
        .fallback(authorization_server)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            inject_faults,
        ))
        .with_state(shared)
}

/// Serves the authorization-server endpoints at the current shape's paths (they change at run
/// time, so they are not static routes), and 404 for every other unknown path.
async fn authorization_server(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let shape = shared.shape();
    let endpoint = Endpoint::classify(request.uri().path(), &shape);
    let allowed: &[Method] = match endpoint {
        Some(Endpoint::Authorize) => &[Method::GET, Method::POST],
        Some(Endpoint::Token | Endpoint::Introspect | Endpoint::Revocation) => &[Method::POST],
        _ => return not_found().await,
    };
    if !allowed.contains(request.method()) {
        return method_not_allowed(allowed);
    }
    let (headers, uri, method) = (
        request.headers().clone(),
        request.uri().clone(),
        request.method().clone(),
    );
    if endpoint == Some(Endpoint::Authorize) && method == Method::GET {
        return oauth::authorize_get(State(shared), uri).await;
    }
    let body = Bytes::from_request(request, &()).await;
    match endpoint {
        Some(Endpoint::Authorize) => oauth::authorize_post(State(shared), headers, body).await,
        Some(Endpoint::Token) => oauth::token(State(shared), headers, body).await,
        Some(Endpoint::Introspect) => oauth::introspect(State(shared), headers, body).await,
        _ => oauth::revoke(State(shared), headers, body).await,
    }
}

fn method_not_allowed(allowed: &[Method]) -> Response {
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(",");
    let mut response = (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({
            "status": 405, "error": "method_not_allowed", "message": format!("allowed: {list}")
        })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "status": 404, "error": "not_found", "message": "no such endpoint" })),
    )
        .into_response()
}

/// A response extension telling the connection loop to drop the connection unanswered.
#[derive(Debug, Clone, Copy)]
struct DropConnectionMarker;

/// Middleware that counts endpoint hits and serves queued faults.
async fn inject_faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some((_, fault)) = shared.take_fault(request.uri().path()) else {
        return next.run(request).await;
    };
    match fault {
        None => next.run(request).await,
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(serde_json::json!({
                    "error": "temporarily_unavailable",
                    "error_description": "too many requests (injected fault)",
                })),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        Some(Fault::ServerError(status)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(serde_json::json!({
                "error": "server_error",
                "error_description": "server error (injected fault)",
            })),
        )
            .into_response(),
        Some(Fault::Unauthorized) => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({
                    "error": "unauthorized",
                    "error_description": "unauthorized (injected fault)",
                })),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gateway\""),
            );
            response
        }
        Some(Fault::DropConnection) => {
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            response.extensions_mut().insert(DropConnectionMarker);
            response
        }
    }
}

/// Accepts connections until shutdown, then lets open requests finish (at most 5 seconds).
async fn serve(listener: TcpListener, router: Router, mut shutdown: oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(router);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Best effort: Nagle's algorithm only adds latency on loopback.
        stream.set_nodelay(true).ok();
        let service = service.clone();
        let per_request = service_fn(move |request| {
            let call = service.call(request);
            async move {
                let response = match call.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                if response
                    .extensions()
                    .get::<DropConnectionMarker>()
                    .is_some()
                {
                    return Err(std::io::Error::other(
                        "connection dropped by an injected fault",
                    ));
                }
                Ok(response)
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), per_request);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::trace!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after 5 seconds; closing them");
    }
}
