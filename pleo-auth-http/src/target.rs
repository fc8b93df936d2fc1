//! Who a request is for, and per-request options.

use pleo_auth_core::{CompanyId, OrganisationId, Scope, ScopeSet, TenantId};

/// Who a request is for: the company (sent as `company_id`) and whose credential acts for it.
///
/// - [`Target::company`]: the company's own credential.
/// - [`Target::organisation`] plus [`Target::with_company`]: the organisation's credential, for
///   one explicit company of that organisation.
/// - [`Target::tenant`]: your own tenant id, resolved through
///   [`TenantLinks`](pleo_auth_core::TenantLinks) to the linked company (or organisation, which
///   then needs [`Target::with_company`]).
///
/// The plain client sets it with `.company(..)`, `.organisation(..)` and `.tenant(..)`; with
/// [`PleoAuthMiddleware`](crate::PleoAuthMiddleware), add it to the request as an extension.
///
/// ```
/// use pleo_auth_core::{CompanyId, OrganisationId};
/// use pleo_auth_http::Target;
///
/// let company: CompanyId = "0c000000-0000-4000-8000-000000000001".parse()?;
/// let org: OrganisationId = "0a000000-0000-4000-8000-000000000001".parse()?;
/// let by_company = Target::company(company);
/// let by_org = Target::organisation(org).with_company(company);
/// assert_ne!(by_company, by_org);
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub(crate) company: Option<CompanyId>,
    pub(crate) organisation: Option<OrganisationId>,
    pub(crate) tenant: Option<TenantId>,
}

impl Target {
    /// A request for `company`, with the company's own credential.
    pub fn company(company: CompanyId) -> Self {
        Self {
            company: Some(company),
            ..Self::default()
        }
    }

    /// A request with the credential of `organisation`; name the company with
    /// [`Target::with_company`].
    pub fn organisation(organisation: OrganisationId) -> Self {
        Self {
            organisation: Some(organisation),
            ..Self::default()
        }
    }

    /// A request for the Pleo subject linked to your `tenant`.
    pub fn tenant(tenant: TenantId) -> Self {
        Self {
            tenant: Some(tenant),
            ..Self::default()
        }
    }

    /// Names the company explicitly (sent as `company_id`).
    pub fn with_company(mut self, company: CompanyId) -> Self {
        self.company = Some(company);
        self
    }

    /// Uses the credential of `organisation`.
    pub fn with_organisation(mut self, organisation: OrganisationId) -> Self {
        self.organisation = Some(organisation);
        self
    }

    /// Resolves the credential through the link of `tenant`.
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// The explicitly named company, if any.
    pub fn company_id(&self) -> Option<CompanyId> {
        self.company
    }

    /// The named organisation, if any.
    pub fn organisation_id(&self) -> Option<OrganisationId> {
        self.organisation
    }

    /// The named tenant, if any.
    pub fn tenant_id(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }
}

/// Options of one request. With [`PleoAuthMiddleware`](crate::PleoAuthMiddleware), add it to
/// the request as an extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    pub(crate) retry_non_idempotent: bool,
    pub(crate) required_scopes: ScopeSet,
}

impl RequestOptions {
    /// Default options: non-idempotent methods are not retried, no scope hint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries this request on transient failures even if its method is not idempotent
    /// (a `POST` that the API deduplicates, for example).
    pub fn retry_non_idempotent(mut self) -> Self {
        self.retry_non_idempotent = true;
        self
    }

    /// Names a scope the endpoint needs, reported in a
    /// [`PermissionDenied`](pleo_auth_core::ErrorKind::PermissionDenied) error.
    pub fn required_scope(mut self, scope: Scope) -> Self {
        self.required_scopes.insert(scope);
        self
    }
}
