//! `CredentialProvider`: what the HTTP layer asks for before each request.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::environment::EnvironmentName;
use crate::error::Result;
use crate::record::CredentialKind;
use crate::scope::ScopeSet;
use crate::secret::AuthorizationHeader;
use crate::subject::Subject;

/// Identifies one issued credential value (one access token, one API key), so a rejection can
/// name exactly what the server refused. Two values of the same grant have different ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialId(u64);

static NEXT_CREDENTIAL_ID: AtomicU64 = AtomicU64::new(1);

impl CredentialId {
    /// A new id, unique within this process.
    pub fn next() -> Self {
        Self(NEXT_CREDENTIAL_ID.fetch_add(1, Ordering::Relaxed))
    }

    /// The numeric id, for logs.
    pub fn as_u64(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cred-{}", self.0)
    }
}

/// A credential ready to be sent: the `Authorization` header and what it is bound to.
#[derive(Clone)]
pub struct Credential {
    /// Which value this is, for [`CredentialProvider::rejected`].
    pub id: CredentialId,
    /// The `Authorization` header value.
    pub header: AuthorizationHeader,
    /// The company or organisation the credential acts for.
    pub subject: Subject,
    /// The environment the credential belongs to.
    pub environment: EnvironmentName,
    /// The scopes the credential carries, when known.
    pub scopes: ScopeSet,
    /// OAuth token or API key.
    pub kind: CredentialKind,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("environment", &self.environment)
            .field("scopes", &self.scopes)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Hands out the credential bound to a subject, and hears about rejections.
///
/// Implemented by the OAuth refresh manager and by the API key providers. Implementations must
/// never return a credential of another subject or environment than asked for.
#[async_trait]
pub trait CredentialProvider: Send + Sync + fmt::Debug + 'static {
    /// The environment whose credentials this provider holds.
    fn environment(&self) -> &EnvironmentName;

    /// The current credential of `subject`: fresh, refreshed, or an error saying why not
    /// (`NotFound`, `NeedsReauthorization`, `NeedsReplacement`, `Unavailable`, ...). Shared, not
    /// copied: the secret it carries exists once however many requests use it.
    async fn credential_for(&self, subject: &Subject) -> Result<Arc<Credential>>;

    /// The server answered 401 to a request sent with credential `id` for `subject`. The
    /// provider refreshes only if `id` is still the current value, so many concurrent
    /// rejections of one value cause one refresh. Returns whether a retry can help.
    async fn rejected(&self, subject: &Subject, id: &CredentialId) -> Result<bool>;
}

/// A shared, type-erased provider.
pub type DynCredentialProvider = Arc<dyn CredentialProvider>;
