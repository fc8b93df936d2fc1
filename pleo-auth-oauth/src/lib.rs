#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod callback;
mod config;
mod connect;
mod error;
mod events;
mod inner;
mod manager;
mod policy;
mod token;

pub use config::{DEFAULT_PENDING_TTL, OAuthConfig, OAuthConfigBuilder};
pub use connect::{
    AuthorizationRequest, AuthorizationState, AuthorizeOptions, Connection, OAuthClient,
};
pub use error::{Error, ErrorKind, Result};
pub use events::{DynEventSink, EventSink, OAuthEvent, TracingEvents};
pub use inner::OAuthClientBuilder;
pub use manager::{
    ActiveToken, DisconnectOutcome, GrantState, GrantStatus, KeepAliveReport, TokenManager,
};
pub use policy::RefreshPolicy;
