#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod clock;
mod environment;
mod error;
mod key;
mod lease;
mod memory;
mod provider;
mod record;
mod scope;
mod secret;
mod store;
mod store_lease;
mod subject;
mod tenant;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use backoff::Backoff;
pub use clock::{Clock, DynClock, ManualClock, SystemClock};
pub use environment::{
    Environment, EnvironmentName, check_transport_security, is_loopback, parse_base_url,
};
pub use error::{Error, ErrorKind, Result};
pub use key::{
    ClientId, CredentialKey, MAX_SEGMENT_LEN, MAX_STORE_KEY_LEN, StoreKey, TenantId, layout,
};
pub use lease::{DynLease, InProcessLease, Lease, LeaseGuard, LeaseRelease, Sharing};
pub use memory::MemoryStore;
pub use provider::{Credential, CredentialId, CredentialProvider, DynCredentialProvider};
pub use record::{
    ApiKeyCredential, ApiKeyKind, CredentialKind, CredentialStatus, DanglingGrant, DanglingReason,
    LinkStatus, OAuthGrant, PendingAuthorization, Record, RevocationState, TenantLink, Timestamp,
};
pub use scope::{MAX_SCOPE_LEN, MAX_SCOPES, Scope, ScopeSet};
pub use secret::{
    AccessToken, ApiKey, AuthorizationCode, AuthorizationHeader, BrowserBinding, ClientSecret,
    PkceVerifier, RefreshToken, SecretBytes, expose_for_storage, random_urlsafe,
};
pub use store::{
    Change, DynSecretStore, ListPage, MAX_PAGE_SIZE, MAX_UPDATE_ROUNDS, Precondition,
    RecordStoreExt, SecretStore, UpdateError, Updated, Version, Versioned, check_page_limit,
    check_precondition, is_conflict,
};
pub use store_lease::{StoreLease, lease_for};
pub use subject::{CompanyId, OrganisationId, Subject};
pub use tenant::{LinkError, LinkOutcome, LinkRequest, PENDING_LINK_TIMEOUT, TenantLinks};
