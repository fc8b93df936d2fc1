//! An authenticated HTTP client for the Pleo External API that never sends one company's
//! credential with another company's request.
//!
//! - [`transport`]: the shared reqwest client (no redirects, timeouts, capped bodies) and
//!   `Retry-After` parsing.
//! - [`api`]: raw calls the connect flows need (`/v1/introspect`, `/v1/installations/me`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod api;
pub mod transport;
