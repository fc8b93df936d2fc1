//! Secret stores for pleo-auth, each behind its own feature.
//!
//! Every store implements [`pleo_auth_core::SecretStore`] and passes
//! `pleo_auth_core::testing::conformance`. Errors are [`pleo_auth_core::Error`]s tagged with the
//! backend's name; no error carries a secret value.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "file")]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub mod file;

#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub mod encrypted;

#[cfg(any(
    feature = "vault",
    feature = "aws",
    feature = "redis",
    feature = "postgres",
    feature = "kms"
))]
mod cause;

#[cfg(any(feature = "aws", feature = "kms"))]
mod aws_error;

#[cfg(feature = "vault")]
#[cfg_attr(docsrs, doc(cfg(feature = "vault")))]
pub mod vault;

#[cfg(feature = "aws")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
pub mod aws;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(feature = "kms")]
#[cfg_attr(docsrs, doc(cfg(feature = "kms")))]
pub mod kms;

#[cfg(feature = "transit")]
#[cfg_attr(docsrs, doc(cfg(feature = "transit")))]
pub mod transit;
