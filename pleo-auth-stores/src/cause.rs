//! Causes of backend errors for the network stores, as text that cannot hold a secret.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The cause attached to a backend's [`pleo_auth_core::Error`]: only parts that cannot hold a
/// secret (a server's error message, a status, a transport failure), never a request or
/// response body. `Debug` and `Display` show the same text.
pub(crate) struct Cause(String);

impl Cause {
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Cause(text.into())
    }

    /// The `Display` texts of `e` and its sources, joined by `: `. Only for errors whose chain
    /// holds no secret (transport errors).
    #[cfg(any(feature = "vault", feature = "aws", feature = "kms"))]
    pub(crate) fn from_chain(e: &(dyn StdError + 'static)) -> Self {
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            text.push_str(": ");
            text.push_str(&s.to_string());
            next = s.source();
        }
        Cause(text)
    }

    #[cfg(any(feature = "vault", feature = "aws", feature = "kms"))]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl StdError for Cause {}

/// Whether a transport error is a failed TLS handshake, which no retry cures. rustls reports
/// those as I/O errors of kind `InvalidData`.
pub(crate) fn is_tls_failure(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        // Some crates keep causes behind an `Arc`, and an I/O error's `source` skips the error it
        // wraps: look through both.
        if let Some(shared) = err.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
            next = Some(&**shared);
            continue;
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::InvalidData => return true,
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_found_inside_io_errors_and_arcs() {
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid peer certificate");
        let wrapped = std::io::Error::other(tls);
        assert!(is_tls_failure(&wrapped));
        let shared: Arc<dyn StdError + Send + Sync> = Arc::new(wrapped);
        assert!(is_tls_failure(&shared));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_failure(&refused));
    }

    #[cfg(any(feature = "vault", feature = "aws"))]
    #[test]
    fn chains_are_joined() {
        let e = std::io::Error::other("inner");
        assert_eq!(Cause::from_chain(&e).as_str(), "inner");
        assert_eq!(format!("{:?}", Cause::new("x")), "\"x\"");
    }
}
