//! Secret stores for pleo-auth, each behind its own feature.
//!
//! | module | what | feature |
//! |---|---|---|
//! | `file` | the embedded file store (default) | `file` |
//! | `vault` | Vault / OpenBao KV v2 (token, token file, AppRole or Kubernetes auth) | `vault` |
//! | `aws` | AWS Secrets Manager | `aws` |
//! | `redis` | Redis store and lease | `redis` |
//! | `postgres` | PostgreSQL store and lease (sqlx, explicit migrations) | `postgres` |
//! | `encrypted` | envelope encryption for any store, local keys | `encryption` |
//! | `kms` | data keys from AWS KMS for `encrypted` | `kms` |
//! | `transit` | data keys from Vault / OpenBao Transit for `encrypted` | `transit` |
//!
//! Every store implements [`pleo_auth_core::SecretStore`] (batch reads included) and passes
//! `pleo_auth_core::testing::conformance`; the Redis and PostgreSQL leases pass
//! `lease_conformance`. Errors are [`pleo_auth_core::Error`]s tagged with the backend's name; no
//! error carries a secret value.
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

#[cfg(any(feature = "redis", feature = "postgres"))]
mod address;

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
