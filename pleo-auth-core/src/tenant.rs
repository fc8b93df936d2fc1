//! Tenant links: one integrator tenant <-> one Pleo subject, per environment, enforced with
//! compare-and-swap so that it holds across replicas.

use std::future::Future;
use std::time::Duration;

use crate::clock::DynClock;
use crate::environment::EnvironmentName;
use crate::error::{Error, ErrorKind, Result};
use crate::key::{ClientId, StoreKey, TenantId, layout};
use crate::record::{CredentialKind, LinkStatus, TenantLink, Timestamp};
use crate::store::{Change, DynSecretStore, Precondition, RecordStoreExt, Version, is_conflict};
use crate::subject::Subject;

/// How long a `Pending` link (claimed by a writer that then crashed) blocks others.
pub const PENDING_LINK_TIMEOUT: Duration = Duration::from_secs(300);

/// What to link: a tenant, the Pleo subject, and the credential that connects them.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    /// The environment.
    pub environment: EnvironmentName,
    /// The integrator's tenant.
    pub tenant: TenantId,
    /// The Pleo company or organisation.
    pub subject: Subject,
    /// How the subject is connected.
    pub credential_kind: CredentialKind,
    /// The OAuth client or integration holding the credential.
    pub client_id: ClientId,
    /// Whether an existing link of either side may be moved. Without it, linking a tenant that
    /// is linked to another subject, or a subject linked to another tenant, is refused.
    pub relink: bool,
}

/// What a successful link changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkOutcome {
    /// Links that were replaced because `relink` was asked for.
    pub replaced: Vec<TenantLink>,
}

/// Why [`TenantLinks::link_with`] failed.
#[derive(Debug)]
pub enum LinkError<E> {
    /// Linking failed: a [`Conflict`](crate::ErrorKind::Conflict) when the tenant or the
    /// subject is linked to another party, or a store error. Nothing was written.
    Link(Error),
    /// The credential write failed; the claims were rolled back.
    Write(E),
}

/// Reads and writes tenant links in a [`SecretStore`](crate::SecretStore).
#[derive(Debug, Clone)]
pub struct TenantLinks {
    store: DynSecretStore,
    clock: DynClock,
}

struct Side {
    key: StoreKey,
    current: Option<(TenantLink, Version)>,
}

impl TenantLinks {
    /// Tenant links kept in `store`.
    pub fn new(store: DynSecretStore, clock: DynClock) -> Self {
        Self { store, clock }
    }

    /// The active link of `tenant`, if any.
    pub async fn subject_for(
        &self,
        environment: &EnvironmentName,
        tenant: &TenantId,
    ) -> Result<Option<TenantLink>> {
        self.active(&layout::tenant_link(environment, tenant)).await
    }

    /// The active link of `subject`, if any.
    pub async fn tenant_for(
        &self,
        environment: &EnvironmentName,
        subject: &Subject,
    ) -> Result<Option<TenantLink>> {
        self.active(&layout::subject_link(environment, subject))
            .await
    }

    /// Every active link in `environment`.
    pub async fn list(&self, environment: &EnvironmentName) -> Result<Vec<TenantLink>> {
        let mut links = Vec::new();
        for key in self.store.list(&layout::tenant_links(environment)).await? {
            if let Some(link) = self.active(&key).await? {
                links.push(link);
            }
        }
        Ok(links)
    }

    async fn active(&self, key: &StoreKey) -> Result<Option<TenantLink>> {
        Ok(self
            .store
            .get_record::<TenantLink>(key)
            .await?
            .map(|(link, _)| link)
            .filter(|link| link.status == LinkStatus::Active))
    }

    /// Links the pair without writing a credential.
    pub async fn link(&self, request: &LinkRequest) -> Result<LinkOutcome> {
        match self.link_with(request, async { Ok::<(), Error>(()) }).await {
            Ok(((), outcome)) => Ok(outcome),
            Err(LinkError::Link(e) | LinkError::Write(e)) => Err(e),
        }
    }

    /// Links the pair and runs `write_credential` between claiming and settling the link, so
    /// the link and the credential appear together: if the claim conflicts, nothing is written
    /// ([`LinkError::Link`]); if the write fails, the claim is rolled back and the write's own
    /// error returned ([`LinkError::Write`]).
    pub async fn link_with<T, E, F>(
        &self,
        request: &LinkRequest,
        write_credential: F,
    ) -> std::result::Result<(T, LinkOutcome), LinkError<E>>
    where
        F: Future<Output = std::result::Result<T, E>> + Send,
    {
        let env = &request.environment;
        let tenant_side = self
            .side(layout::tenant_link(env, &request.tenant))
            .await
            .map_err(LinkError::Link)?;
        let subject_side = self
            .side(layout::subject_link(env, &request.subject))
            .await
            .map_err(LinkError::Link)?;

        let now = self.clock.timestamp();
        let mut replaced = Vec::new();
        if let Some((link, _)) = self.blocking(&tenant_side, now)
            && link.subject != request.subject
        {
            if !request.relink {
                return Err(LinkError::Link(Error::conflict(format!(
                    "tenant {:?} is already linked to {}; refusing to link it to {} without relink",
                    request.tenant.as_str(),
                    link.subject,
                    request.subject
                ))));
            }
            replaced.push(link.clone());
        }
        if let Some((link, _)) = self.blocking(&subject_side, now)
            && link.tenant != request.tenant
        {
            if !request.relink {
                return Err(LinkError::Link(Error::conflict(format!(
                    "{} is already linked to tenant {:?}; refusing to link it to tenant {:?} without relink",
                    request.subject,
                    link.tenant.as_str(),
                    request.tenant.as_str()
                ))));
            }
            replaced.push(link.clone());
        }

        let created_at = [&tenant_side, &subject_side]
            .iter()
            .filter_map(|s| s.current.as_ref())
            .find(|(l, _)| l.tenant == request.tenant && l.subject == request.subject)
            .map_or(now, |(l, _)| l.created_at);
        let mut link = TenantLink {
            environment: env.clone(),
            tenant: request.tenant.clone(),
            subject: request.subject,
            credential_kind: request.credential_kind,
            client_id: request.client_id.clone(),
            status: LinkStatus::Pending,
            created_at,
            updated_at: now,
        };

        // Claim both sides; a concurrent linker loses here with a Conflict.
        let tenant_claim = self
            .claim(&tenant_side, &link, None)
            .await
            .map_err(LinkError::Link)?;
        let subject_claim = match self.claim(&subject_side, &link, None).await {
            Ok(v) => v,
            Err(e) => {
                self.roll_back(&tenant_side, tenant_claim).await;
                return Err(LinkError::Link(e));
            }
        };

        let value = match write_credential.await {
            Ok(value) => value,
            Err(e) => {
                self.roll_back(&subject_side, subject_claim).await;
                self.roll_back(&tenant_side, tenant_claim).await;
                return Err(LinkError::Write(e));
            }
        };

        link.status = LinkStatus::Active;
        self.claim(&tenant_side, &link, Some(tenant_claim))
            .await
            .map_err(LinkError::Link)?;
        self.claim(&subject_side, &link, Some(subject_claim))
            .await
            .map_err(LinkError::Link)?;

        // Remove the far ends of replaced links, so both directions stay one-to-one.
        for old in &replaced {
            let far = if old.tenant != request.tenant {
                layout::tenant_link(env, &old.tenant)
            } else {
                layout::subject_link(env, &old.subject)
            };
            // Only while it still names the replaced link; whoever changed it decided.
            self.store
                .update::<TenantLink, _, Error, _>(&far, |current| {
                    Ok(match current {
                        Some((far_link, _))
                            if far_link.tenant == old.tenant && far_link.subject == old.subject =>
                        {
                            (Change::Delete, ())
                        }
                        _ => (Change::Keep, ()),
                    })
                })
                .await
                .map_err(|e| LinkError::Link(e.into_error()))?;
        }
        tracing::info!(
            environment = %env,
            tenant = request.tenant.as_str(),
            subject = %request.subject,
            replaced = replaced.len(),
            "tenant linked"
        );
        Ok((value, LinkOutcome { replaced }))
    }

    /// Removes the link of `tenant` (both directions). Returns the removed link. The
    /// credential is left for the method's `disconnect` to handle.
    pub async fn unlink(
        &self,
        environment: &EnvironmentName,
        tenant: &TenantId,
    ) -> Result<Option<TenantLink>> {
        let key = layout::tenant_link(environment, tenant);
        let Some((link, version)) = self.store.get_record::<TenantLink>(&key).await? else {
            return Ok(None);
        };
        let reverse = layout::subject_link(environment, &link.subject);
        if let Some((rev, rev_version)) = self.store.get_record::<TenantLink>(&reverse).await?
            && rev.tenant == link.tenant
        {
            self.store
                .delete(&reverse, Precondition::Version(rev_version))
                .await?;
        }
        self.store
            .delete(&key, Precondition::Version(version))
            .await?;
        Ok(Some(link))
    }

    async fn side(&self, key: StoreKey) -> Result<Side> {
        let current = self.store.get_record::<TenantLink>(&key).await?;
        Ok(Side { key, current })
    }

    /// The side's current link, unless it is a stale pending claim.
    fn blocking<'a>(&self, side: &'a Side, now: Timestamp) -> Option<&'a (TenantLink, Version)> {
        side.current.as_ref().filter(|(link, _)| {
            link.status == LinkStatus::Active
                || now.saturating_since(link.updated_at) < PENDING_LINK_TIMEOUT
        })
    }

    async fn claim(
        &self,
        side: &Side,
        link: &TenantLink,
        ours: Option<Version>,
    ) -> Result<Version> {
        let precondition = match (ours, &side.current) {
            (Some(v), _) => Precondition::Version(v),
            (None, Some((_, v))) => Precondition::Version(v.clone()),
            (None, None) => Precondition::Absent,
        };
        self.store
            .put_record(&side.key, link, precondition)
            .await
            .map_err(|e| {
                if is_conflict(&e) {
                    Error::new(
                        ErrorKind::Conflict,
                        "another writer changed this tenant link at the same time; nothing was linked",
                    )
                    .with_source(e)
                } else {
                    e
                }
            })
    }

    async fn roll_back(&self, side: &Side, ours: Version) {
        let result = match &side.current {
            Some((previous, _)) => self
                .store
                .put_record(&side.key, previous, Precondition::Version(ours))
                .await
                .map(|_| ()),
            None => {
                self.store
                    .delete(&side.key, Precondition::Version(ours))
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(key = %side.key, error = %e, "tenant link rollback failed; the pending claim expires");
        }
    }
}
