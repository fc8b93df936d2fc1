#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod admin_http;
mod api;
mod config;
mod error;
mod faults;
mod html;
mod oauth;
mod rewrite;
pub mod seed;
mod server;
mod shape;
mod state;
mod stats;
mod time;
mod util;

pub use admin::RevokeTarget;
pub use config::{ClientRegistration, Company, Organisation, Sandbox, SandboxBuilder};
pub use error::SandboxError;
pub use faults::{Endpoint, Fault};
pub use rewrite::{IssuedTokenResponse, TokenResponseReplacement, TokenResponseRewrite};
pub use server::SandboxHandle;
pub use shape::{ExpiresInFormat, ServerShape};
pub use stats::{ApiRequestRecord, AuthMethod, GrantStats, OutcomeCounts, RevocationCause, Stats};
pub use util::token_fingerprint;
