#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Layers, each importing only from those above it in this list (`cargo xtask ci` checks that the
// files import each other in no circle):
// 1. values: errors, time, minted secrets, the server shape, configuration and seed data, faults,
//    statistics, the administration and rewrite types;
// 2. state: the records and the shared state with its operations;
// 3. handlers: request reading, HTML pages, the authorization server, the External API and the
//    administration endpoints;
// 4. the server and the handle on it; 5. the builder that starts them; 6. the harness that
//    drives a started sandbox from outside, as tests do.
mod error;
mod secrets;
mod time;

mod config;
mod faults;
mod rewrite;
pub mod seed;
mod shape;
mod stats;

pub mod admin;

mod records;
mod state;

mod admin_http;
mod api;
mod html;
mod oauth;
mod request;

mod handle;
mod server;

mod builder;

#[cfg(feature = "harness")]
#[cfg_attr(docsrs, doc(cfg(feature = "harness")))]
pub mod harness;

pub use admin::RevokeTarget;
pub use builder::{Sandbox, SandboxBuilder};
pub use config::{ClientRegistration, Company, Organisation};
pub use error::SandboxError;
pub use faults::{Endpoint, Fault};
pub use handle::SandboxHandle;
pub use rewrite::{IssuedTokenResponse, TokenResponseReplacement, TokenResponseRewrite};
pub use secrets::token_fingerprint;
pub use shape::{ExpiresInFormat, ServerShape};
pub use stats::{ApiRequestRecord, AuthMethod, GrantStats, OutcomeCounts, RevocationCause, Stats};
