#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod callback;
mod config;
mod connect;
mod dangling;
mod error;
mod events;
mod grant;
mod inner;
mod keep_alive;
mod manager;
mod pending;
mod policy;
mod recovery;
mod server;
mod subject;
mod token;

pub use builder::OAuthClientBuilder;
pub use config::{DEFAULT_PENDING_TTL, OAuthConfig, OAuthConfigBuilder};
pub use connect::{
    AuthorizationRequest, AuthorizationState, AuthorizeOptions, Connection, OAuthClient,
};
pub use dangling::{DanglingStatus, Disposal};
pub use error::{Error, ErrorKind, Result};
pub use events::{DynEventSink, EventSink, OAuthEvent, TracingEvents};
pub use grant::cell::ActiveToken;
pub use grant::disconnect::DisconnectOutcome;
pub use keep_alive::{KEEP_ALIVE_PAGE, KeepAliveOptions, KeepAliveReport};
pub use manager::{FLUSH_ROUNDS, GrantState, GrantStatus, TokenManager};
pub use pending::{PendingStatus, PendingSweep};
pub use policy::RefreshPolicy;
pub use recovery::{PendingPair, Recovered};
pub use server::{AuthorizationServer, ResolveSubject, SubjectLookup};
pub use token::MAX_TOKEN_LIFETIME;
