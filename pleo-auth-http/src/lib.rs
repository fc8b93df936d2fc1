#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod admin;
pub mod api;
#[cfg(feature = "axum")]
mod authorization;
mod callback;
mod client;
mod connect;
mod engine;
mod error;
mod middleware;
mod pages;
mod retry;
mod status;
mod target;
pub mod transport;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use admin::{
    AdminConnection, AdminDisconnect, AdminHealth, AdminView, DynAdminView, WAITING_FOR_CONSENT,
    admin_router,
};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use authorization::{
    ConnectAuthorization, DangerAuthorizedElsewhere, DynConnectAuthorization, Rejection,
    SameOriginPath,
};
pub use callback::LoopbackCallback;
pub use client::{
    DEFAULT_MAX_RESPONSE_BYTES, PleoClient, PleoClientBuilder, RequestBuilder, Response,
};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use connect::router::{ConnectRoutes, connect_router};
pub use connect::{ConnectFlow, DynConnectFlow};
pub use error::{Error, MAX_SERVER_MESSAGE_BYTES, Result};
pub use middleware::PleoAuthMiddleware;
pub use retry::RetryPolicy;
pub use status::error_for_status;
pub use target::{RequestOptions, Target};
