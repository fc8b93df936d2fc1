//! The public error type.

use std::net::SocketAddr;

use uuid::Uuid;

/// Why a sandbox could not start, or why an administrative action was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The builder was given an inconsistent or unusable setting.
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(String),
    /// The address is not a loopback address; the sandbox only listens on loopback.
    #[error("refusing to listen on non-loopback address {0}")]
    NotLoopback(SocketAddr),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address that was requested.
        addr: SocketAddr,
        /// The operating system error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system random number generator is unavailable.
    #[error("the operating system random number generator failed")]
    Random,
    /// No client with this ID is registered.
    #[error("unknown client {0:?}")]
    UnknownClient(String),
    /// No company or organisation has this ID.
    #[error("unknown company or organisation {0}")]
    UnknownSubject(Uuid),
    /// The ID names an organisation where a company is required.
    #[error("{0} is not a company")]
    NotACompany(Uuid),
}
