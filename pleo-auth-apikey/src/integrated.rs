//! Integrated API keys: one key per customer installation, pasted by the customer, validated
//! with Pleo, stored per company, replaced on demand.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pleo_auth_core::{
    ApiKey, ApiKeyCredential, ApiKeyKind, AuthorizationHeader, CompanyId, Credential, CredentialId,
    CredentialKey, CredentialKind, CredentialProvider, CredentialStatus, DynClock, DynSecretStore,
    EnvironmentName, LinkError, LinkRequest, Precondition, RecordStoreExt, StoreKey, Subject,
    SystemClock, TenantId, TenantLink, TenantLinks, Version, is_conflict, layout,
};
use tracing::Instrument as _;

use crate::config::ApiKeyConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{ApiKeyEvent, ApiKeyEventSink};
use crate::format::validate_key_format;
use crate::info::KeyInfo;
use crate::pleo::{Expectations, PleoApi, check_integrated};

/// How long a credential read from the store is served from memory before the store is read
/// again (to see a replacement or removal made by another replica).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

/// How long a key that Pleo accepted when a 401 made us ask again is believed: more 401s for
/// the same key within this time are retried without asking Pleo again.
pub const REVALIDATION_MEMO: Duration = Duration::from_secs(10);

/// Why a key is marked `NeedsReplacement`, stored in its record.
const REJECTED_REASON: &str =
    "pleo answered 401 to a request and to GET /v1/introspect with this key";

/// What [`IntegratedKeys::connect_with`] should check and link besides the key itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    expected_company: Option<CompanyId>,
    tenant: Option<TenantId>,
    relink: bool,
}

impl ConnectOptions {
    /// No expected company, no tenant.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse the key ([`ErrorKind::WrongCompany`]) unless it belongs to `company`.
    pub fn expect_company(mut self, company: CompanyId) -> Self {
        self.expected_company = Some(company);
        self
    }

    /// Link `tenant` (the integrator's own id of the customer) to the key's company, in the
    /// same step as storing the key.
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Allow moving an existing link: the tenant linked to another company, or the company
    /// linked to another tenant. Without it, either is refused with [`ErrorKind::TenantConflict`].
    pub fn relink(mut self, relink: bool) -> Self {
        self.relink = relink;
        self
    }
}

/// The result of [`IntegratedKeys::connect_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The stored key, described without the key.
    pub key: KeyInfo,
    /// Tenant links that were moved because [`ConnectOptions::relink`] was asked for.
    pub replaced_links: Vec<TenantLink>,
}

/// Builds an [`IntegratedKeys`]. Obtain one with [`IntegratedKeys::builder`].
pub struct IntegratedKeysBuilder {
    config: ApiKeyConfig,
    store: DynSecretStore,
    clock: Option<DynClock>,
    http: Option<reqwest::Client>,
    events: Option<Arc<dyn ApiKeyEventSink>>,
    cache_ttl: Duration,
}

impl fmt::Debug for IntegratedKeysBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegratedKeysBuilder")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl IntegratedKeysBuilder {
    /// The clock for stored timestamps and the cache lifetime (default: the system clock).
    pub fn clock(mut self, clock: DynClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The HTTP client for Pleo calls (default: `pleo_auth_http::transport::http_client`, which
    /// follows no redirects). A client you pass must not follow redirects either.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Where [`ApiKeyEvent`]s go (default: only `tracing`).
    pub fn events(mut self, sink: impl ApiKeyEventSink) -> Self {
        self.events = Some(Arc::new(sink));
        self
    }

    /// How long a credential is served from memory before the store is read again (default
    /// [`DEFAULT_CACHE_TTL`]). Replacements and rejections in this process take effect at once.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Builds the provider.
    pub fn build(self) -> Result<IntegratedKeys> {
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let pleo = PleoApi::new(self.config.environment().clone(), self.http)?;
        Ok(IntegratedKeys {
            inner: Arc::new(Inner {
                links: TenantLinks::new(self.store.clone(), clock.clone()),
                config: self.config,
                store: self.store,
                clock,
                pleo,
                events: self.events,
                cache: RwLock::new(HashMap::new()),
                cache_ttl: self.cache_ttl,
                revalidations: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// The Integrated API keys of one integration in one environment, kept in a [`SecretStore`]
/// under (environment, integration id, company), and handed out as a
/// [`CredentialProvider`].
///
/// Cheap to clone; clones share the store, the cache and the event sink.
///
/// The in-memory cache is a `std::sync::RwLock<HashMap>`: a request takes the read lock for
/// one lookup and a clone of the credential, never across an `.await`. Entries are re-read from
/// the store after the cache lifetime, and replaced at once by [`replace`](Self::replace),
/// [`remove`](Self::remove) and [`rejected`](CredentialProvider::rejected) in this process.
///
/// [`SecretStore`]: pleo_auth_core::SecretStore
#[derive(Clone)]
pub struct IntegratedKeys {
    inner: Arc<Inner>,
}

impl fmt::Debug for IntegratedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegratedKeys")
            .field("config", &self.inner.config)
            .field("store", &self.inner.store)
            .field("cache_ttl", &self.inner.cache_ttl)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: ApiKeyConfig,
    store: DynSecretStore,
    links: TenantLinks,
    clock: DynClock,
    pleo: PleoApi,
    events: Option<Arc<dyn ApiKeyEventSink>>,
    cache: RwLock<HashMap<Subject, CacheEntry>>,
    cache_ttl: Duration,
    /// Per subject: one re-validation at a time, and the key Pleo last accepted (and when).
    revalidations: Mutex<HashMap<Subject, RevalidationGate>>,
}

/// One subject's re-validation lock, holding the key Pleo last accepted and when.
type RevalidationGate = Arc<tokio::sync::Mutex<Option<(CredentialId, Instant)>>>;

/// One subject's stored record as last read, in the form requests need.
#[derive(Clone)]
struct CacheEntry {
    version: Version,
    generation: u64,
    loaded_at: Instant,
    state: CachedState,
}

#[derive(Clone)]
enum CachedState {
    Usable(Credential),
    NeedsReplacement,
    Revoked,
}

impl CacheEntry {
    fn answer(&self, subject: &Subject) -> Result<Credential> {
        match &self.state {
            CachedState::Usable(credential) => Ok(credential.clone()),
            CachedState::NeedsReplacement => Err(Error::new(ErrorKind::NeedsReplacement {
                subject: *subject,
            })),
            CachedState::Revoked => Err(Error::new(ErrorKind::Revoked { subject: *subject })),
        }
    }

    fn is_usable(&self) -> bool {
        matches!(self.state, CachedState::Usable(_))
    }
}

impl CachedState {
    fn from_record(record: &ApiKeyCredential) -> Self {
        match (record.status, &record.key) {
            (CredentialStatus::Active, Some(key)) => CachedState::Usable(Credential {
                id: CredentialId::next(),
                header: AuthorizationHeader::basic_api_key(key),
                subject: record.subject,
                environment: record.environment.clone(),
                scopes: record.scopes.clone(),
                kind: CredentialKind::IntegratedApiKey,
            }),
            (CredentialStatus::Active, None) | (CredentialStatus::Revoked, _) => {
                CachedState::Revoked
            }
            _ => CachedState::NeedsReplacement,
        }
    }
}

impl IntegratedKeys {
    /// A builder for the keys described by `config`, kept in `store`.
    pub fn builder(config: ApiKeyConfig, store: DynSecretStore) -> IntegratedKeysBuilder {
        IntegratedKeysBuilder {
            config,
            store,
            clock: None,
            http: None,
            events: None,
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }

    /// The keys described by `config`, kept in `store`, with default settings.
    pub fn new(config: ApiKeyConfig, store: DynSecretStore) -> Result<Self> {
        Self::builder(config, store).build()
    }

    /// The configuration.
    pub fn config(&self) -> &ApiKeyConfig {
        &self.inner.config
    }

    /// Validates a key a customer pasted and stores it for its company; see
    /// [`connect_with`](Self::connect_with). With `expected_company`, a key of another
    /// company is refused.
    pub async fn connect(
        &self,
        key: ApiKey,
        expected_company: Option<CompanyId>,
    ) -> Result<KeyInfo> {
        let mut options = ConnectOptions::new();
        if let Some(company) = expected_company {
            options = options.expect_company(company);
        }
        self.connect_with(key, options).await.map(|c| c.key)
    }

    /// Validates a key a customer pasted, stores it for its company and creates the
    /// installation.
    ///
    /// In order, each step refusing with a clear error and nothing stored:
    /// 1. the key's format ([`validate_key_format`](crate::validate_key_format));
    /// 2. `GET /v1/introspect` with the key: Pleo must accept it ([`ErrorKind::KeyRejected`]) as an
    ///    API key ([`ErrorKind::NotAnApiKey`]) issued to an integration, not a Standalone key
    ///    ([`ErrorKind::NotAnIntegratedKey`]), of one company ([`ErrorKind::NotACompanyKey`]), the
    ///    expected one if named ([`ErrorKind::WrongCompany`]), issued to the configured client if
    ///    configured ([`ErrorKind::WrongIntegration`]), carrying every required scope
    ///    ([`ErrorKind::MissingScopes`]);
    /// 3. the tenant link, if a tenant is named ([`ErrorKind::TenantConflict`]);
    /// 4. `POST /v1/installations/me` ([`ErrorKind::Installation`]);
    /// 5. the compare-and-swap write of the record ([`ErrorKind::ConcurrentChange`]).
    ///
    /// The tenant link and the record are written together: if either fails, neither is left
    /// behind. Connecting a company that already has a key stores the new key (a new
    /// generation) and keeps the record's settings.
    pub async fn connect_with(&self, key: ApiKey, options: ConnectOptions) -> Result<Connected> {
        let span = tracing::info_span!(
            "apikey.connect",
            environment = %self.inner.config.environment().name(),
            integration = self.inner.config.integration_id().as_str(),
            tenant = options.tenant.as_ref().map(TenantId::as_str),
            relink = options.relink,
        );
        self.inner.connect(key, options).instrument(span).await
    }

    /// Swaps the stored key of `company` for `new_key`, which must validate like a key given to
    /// [`connect`](Self::connect) and belong to the **same** company
    /// ([`ErrorKind::WrongCompany`] otherwise). The record is written with compare-and-swap on the
    /// version read before validating, so the old key stays in place until the new one is
    /// stored, and a concurrent change wins over this one ([`ErrorKind::ConcurrentChange`]).
    /// Works on a key marked `NeedsReplacement`, which is its main use.
    pub async fn replace(&self, company: CompanyId, new_key: ApiKey) -> Result<KeyInfo> {
        let span = tracing::info_span!(
            "apikey.replace",
            environment = %self.inner.config.environment().name(),
            integration = self.inner.config.integration_id().as_str(),
            %company,
        );
        self.inner.replace(company, new_key).instrument(span).await
    }

    /// Deletes the stored key of `company` and the tenant link that points at it. Returns what
    /// was removed, or `None` if nothing was stored. The key stays valid at Pleo: the customer
    /// uninstalls the integration in Pleo to revoke it.
    pub async fn remove(&self, company: CompanyId) -> Result<Option<KeyInfo>> {
        let span = tracing::info_span!(
            "apikey.remove",
            environment = %self.inner.config.environment().name(),
            integration = self.inner.config.integration_id().as_str(),
            %company,
        );
        self.inner.remove(company).instrument(span).await
    }

    /// The stored key of `company`, described without the key.
    pub async fn get(&self, company: CompanyId) -> Result<Option<KeyInfo>> {
        let subject = Subject::Company(company);
        let found = self
            .inner
            .read(&self.inner.store_key(&subject), &subject)
            .await?;
        Ok(found.map(|(record, _)| KeyInfo::from_record(&record)))
    }

    /// Every stored Integrated key of this integration in this environment.
    pub async fn list(&self) -> Result<Vec<KeyInfo>> {
        self.inner.list().await
    }
}

impl Inner {
    fn environment(&self) -> &EnvironmentName {
        self.config.environment().name()
    }

    fn store_key(&self, subject: &Subject) -> StoreKey {
        layout::api_key(&CredentialKey::new(
            self.environment().clone(),
            self.config.integration_id().clone(),
            *subject,
        ))
    }

    fn expectations(&self, company: Option<CompanyId>) -> Expectations<'_> {
        Expectations {
            company,
            required_scopes: self.config.required_scopes(),
            pleo_client_id: self.config.pleo_client_id(),
        }
    }

    fn emit(&self, event: ApiKeyEvent) {
        if let Some(sink) = &self.events {
            sink.emit(&event);
        }
    }

    async fn connect(&self, key: ApiKey, options: ConnectOptions) -> Result<Connected> {
        validate_key_format(&key)?;
        let info = self.pleo.introspect_key(&key).await?;
        let company = check_integrated(&info, &self.expectations(options.expected_company))?;
        let subject = Subject::Company(company);
        let store_key = self.store_key(&subject);
        let existing = self.read(&store_key, &subject).await?;
        let now = self.clock.timestamp();
        let record = match &existing {
            Some((old, _)) => {
                let same_key = old
                    .key
                    .as_ref()
                    .is_some_and(|k| k.expose_secret() == key.expose_secret());
                ApiKeyCredential {
                    tenant: options.tenant.clone().or_else(|| old.tenant.clone()),
                    status: CredentialStatus::Active,
                    status_reason: None,
                    key: Some(key.clone()),
                    scopes: info.scopes.clone(),
                    generation: if same_key {
                        old.generation
                    } else {
                        old.generation + 1
                    },
                    updated_at: now,
                    ..old.clone()
                }
            }
            None => ApiKeyCredential {
                environment: self.environment().clone(),
                integration_id: self.config.integration_id().clone(),
                subject,
                tenant: options.tenant.clone(),
                kind: ApiKeyKind::Integrated,
                status: CredentialStatus::Active,
                status_reason: None,
                key: Some(key.clone()),
                scopes: info.scopes.clone(),
                generation: 1,
                created_at: now,
                updated_at: now,
                settings: BTreeMap::new(),
            },
        };
        let precondition = existing.as_ref().map_or(Precondition::Absent, |(_, v)| {
            Precondition::Version(v.clone())
        });
        let write = async {
            self.pleo.create_installation(&key).await?;
            self.put(&store_key, &record, precondition).await
        };
        let (version, replaced_links) = match &options.tenant {
            None => (write.await?, Vec::new()),
            Some(tenant) => {
                self.with_link(tenant, subject, options.relink, write)
                    .await?
            }
        };
        self.forget_moved_tenants(&replaced_links, &subject).await;
        self.cache_store(&subject, &record, version);
        self.emit(ApiKeyEvent::Connected {
            environment: self.environment().clone(),
            integration_id: self.config.integration_id().clone(),
            subject,
            tenant: record.tenant.clone(),
            generation: record.generation,
        });
        tracing::info!(
            subject = %subject,
            generation = record.generation,
            scopes = %record.scopes,
            "integrated api key connected"
        );
        Ok(Connected {
            key: KeyInfo::from_record(&record),
            replaced_links,
        })
    }

    /// Runs `write` inside a tenant link claim, so the link and the record appear together.
    async fn with_link<T, F>(
        &self,
        tenant: &TenantId,
        subject: Subject,
        relink: bool,
        write: F,
    ) -> Result<(T, Vec<TenantLink>)>
    where
        F: Future<Output = Result<T>> + Send,
    {
        let request = LinkRequest {
            environment: self.environment().clone(),
            tenant: tenant.clone(),
            subject,
            credential_kind: CredentialKind::IntegratedApiKey,
            client_id: self.config.integration_id().clone(),
            relink,
        };
        match self.links.link_with(&request, write).await {
            Ok((value, outcome)) => Ok((value, outcome.replaced)),
            Err(LinkError::Write(err)) => Err(err),
            Err(LinkError::Link(source)) if is_conflict(&source) => {
                Err(Error::new(ErrorKind::TenantConflict {
                    tenant: tenant.clone(),
                    subject,
                })
                .with_source(source))
            }
            Err(LinkError::Link(source)) => Err(Error::store(source)),
        }
    }

    /// After a relink moved `tenant` away from another company of this integration, clears
    /// the tenant recorded in that company's key record (best effort: the link records are
    /// the authority).
    async fn forget_moved_tenants(&self, replaced: &[TenantLink], subject: &Subject) {
        for old in replaced {
            if old.subject == *subject
                || old.client_id != *self.config.integration_id()
                || old.credential_kind != CredentialKind::IntegratedApiKey
            {
                continue;
            }
            let key = self.store_key(&old.subject);
            let result = async {
                if let Some((mut record, version)) = self.read(&key, &old.subject).await?
                    && record.tenant.as_ref() == Some(&old.tenant)
                {
                    record.tenant = None;
                    record.updated_at = self.clock.timestamp();
                    self.put(&key, &record, Precondition::Version(version))
                        .await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(subject = %old.subject, %error, "could not clear the moved tenant from the old key record");
            }
        }
    }

    async fn replace(&self, company: CompanyId, new_key: ApiKey) -> Result<KeyInfo> {
        validate_key_format(&new_key)?;
        let subject = Subject::Company(company);
        let store_key = self.store_key(&subject);
        let Some((old, version)) = self.read(&store_key, &subject).await? else {
            return Err(Error::new(ErrorKind::NotFound { subject }));
        };
        let info = self.pleo.introspect_key(&new_key).await?;
        check_integrated(&info, &self.expectations(Some(company)))?;
        self.pleo.create_installation(&new_key).await?;
        let record = ApiKeyCredential {
            status: CredentialStatus::Active,
            status_reason: None,
            key: Some(new_key),
            scopes: info.scopes,
            generation: old.generation + 1,
            updated_at: self.clock.timestamp(),
            ..old
        };
        let new_version = self
            .put(&store_key, &record, Precondition::Version(version))
            .await?;
        self.cache_store(&subject, &record, new_version);
        self.emit(ApiKeyEvent::Replaced {
            environment: self.environment().clone(),
            integration_id: self.config.integration_id().clone(),
            subject,
            generation: record.generation,
        });
        tracing::info!(
            generation = record.generation,
            "integrated api key replaced"
        );
        Ok(KeyInfo::from_record(&record))
    }

    async fn remove(&self, company: CompanyId) -> Result<Option<KeyInfo>> {
        let subject = Subject::Company(company);
        let store_key = self.store_key(&subject);
        let Some((record, version)) = self.read(&store_key, &subject).await? else {
            self.cache_remove(&subject);
            return Ok(None);
        };
        self.store
            .delete(&store_key, Precondition::Version(version))
            .await
            .map_err(|source| Error::record_write(subject, source))?;
        self.cache_remove(&subject);
        let env = self.environment();
        if let Some(link) = self
            .links
            .tenant_for(env, &subject)
            .await
            .map_err(Error::store)?
            && link.client_id == *self.config.integration_id()
            && link.credential_kind == CredentialKind::IntegratedApiKey
        {
            self.links
                .unlink(env, &link.tenant)
                .await
                .map_err(Error::store)?;
        }
        self.emit(ApiKeyEvent::Removed {
            environment: env.clone(),
            integration_id: self.config.integration_id().clone(),
            subject,
        });
        tracing::info!("integrated api key removed");
        Ok(Some(KeyInfo::from_record(&record)))
    }

    async fn list(&self) -> Result<Vec<KeyInfo>> {
        let prefix = layout::api_keys(self.environment(), self.config.integration_id());
        let keys = self.store.list(&prefix).await.map_err(Error::store)?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let record = self
                .store
                .get_record::<ApiKeyCredential>(&key)
                .await
                .map_err(Error::store)?;
            if let Some((record, _)) = record
                && record.kind == ApiKeyKind::Integrated
                && record.environment == *self.environment()
                && record.integration_id == *self.config.integration_id()
            {
                found.push(KeyInfo::from_record(&record));
            }
        }
        Ok(found)
    }

    /// Reads the record of `subject`, refusing one that does not belong where it is stored.
    async fn read(
        &self,
        key: &StoreKey,
        subject: &Subject,
    ) -> Result<Option<(ApiKeyCredential, Version)>> {
        let found = self
            .store
            .get_record::<ApiKeyCredential>(key)
            .await
            .map_err(Error::store)?;
        if let Some((record, _)) = &found {
            let reason = if record.environment != *self.environment() {
                Some("it names another environment")
            } else if record.integration_id != *self.config.integration_id() {
                Some("it names another integration")
            } else if record.subject != *subject {
                Some("it names another subject")
            } else if record.kind != ApiKeyKind::Integrated {
                Some("it holds a standalone key")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::new(ErrorKind::Corrupt {
                    subject: *subject,
                    reason,
                }));
            }
        }
        Ok(found)
    }

    async fn put(
        &self,
        key: &StoreKey,
        record: &ApiKeyCredential,
        precondition: Precondition,
    ) -> Result<Version> {
        self.store
            .put_record(key, record, precondition)
            .await
            .map_err(|source| Error::record_write(record.subject, source))
    }

    async fn credential(&self, subject: &Subject) -> Result<Credential> {
        if let Some(answer) = self.cached(subject) {
            return answer;
        }
        let store_key = self.store_key(subject);
        match self.read(&store_key, subject).await? {
            None => {
                self.cache_remove(subject);
                Err(Error::new(ErrorKind::NotFound { subject: *subject }))
            }
            Some((record, version)) => self.cache_store(subject, &record, version).answer(subject),
        }
    }

    /// The cached answer for `subject`, if the entry is younger than the cache lifetime.
    fn cached(&self, subject: &Subject) -> Option<Result<Credential>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let entry = cache.get(subject)?;
        let age = self
            .clock
            .instant()
            .saturating_duration_since(entry.loaded_at);
        (age < self.cache_ttl).then(|| entry.answer(subject))
    }

    /// Caches what `record` (at `version`) allows. An entry for the same version is kept, so a
    /// credential keeps its id across re-reads.
    fn cache_store(
        &self,
        subject: &Subject,
        record: &ApiKeyCredential,
        version: Version,
    ) -> CacheEntry {
        let now = self.clock.instant();
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = cache.get_mut(subject)
            && entry.version == version
            && entry.generation == record.generation
        {
            entry.loaded_at = now;
            return entry.clone();
        }
        let entry = CacheEntry {
            version,
            generation: record.generation,
            loaded_at: now,
            state: CachedState::from_record(record),
        };
        cache.insert(*subject, entry.clone());
        entry
    }

    fn cache_remove(&self, subject: &Subject) {
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(subject);
    }

    /// The re-validation gate of `subject`.
    fn revalidation_gate(&self, subject: &Subject) -> RevalidationGate {
        self.revalidations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(*subject)
            .or_default()
            .clone()
    }

    /// Handles a 401 for credential `id` of `subject`; see [`CredentialProvider::rejected`].
    ///
    /// A 401 alone condemns nothing: it may come from a proxy, another host or a passing fault.
    /// The key is asked about again (`GET /v1/introspect` at the environment's API host), one
    /// re-validation per subject at a time. Only when Pleo rejects the key there too is it
    /// marked, once, with compare-and-swap, carrying why. A re-validation that fails
    /// transiently returns its error and marks nothing.
    async fn reject(&self, subject: &Subject, id: &CredentialId) -> Result<bool> {
        let gate = self.revalidation_gate(subject);
        let mut accepted = gate.lock().await;
        let current = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(subject)
            .cloned();
        let generation = match current {
            Some(CacheEntry {
                state: CachedState::Usable(credential),
                generation,
                ..
            }) if credential.id == *id => generation,
            // A newer key is current already: a retry with it can help.
            Some(CacheEntry {
                state: CachedState::Usable(_),
                ..
            }) => return Ok(true),
            // Already marked, revoked or removed.
            _ => return Ok(false),
        };
        let now = self.clock.instant();
        if let Some((seen, at)) = &*accepted
            && seen == id
            && now.saturating_duration_since(*at) < REVALIDATION_MEMO
        {
            return Ok(true);
        }
        let store_key = self.store_key(subject);
        let Some((mut record, version)) = self.read(&store_key, subject).await? else {
            self.cache_remove(subject);
            return Ok(false);
        };
        if record.generation != generation || record.status != CredentialStatus::Active {
            // Replaced or marked elsewhere since it was cached: adopt what is stored.
            let entry = self.cache_store(subject, &record, version);
            return Ok(record.generation != generation && entry.is_usable());
        }
        let Some(key) = record.key.clone() else {
            self.cache_store(subject, &record, version);
            return Ok(false);
        };
        match self.pleo.introspect_key(&key).await {
            Ok(_) => {
                tracing::warn!(
                    subject = %subject,
                    generation,
                    "a request was answered 401, but pleo accepts the integrated api key; it stays valid"
                );
                *accepted = Some((id.clone(), now));
                return Ok(true);
            }
            Err(err) if err.kind() == &ErrorKind::KeyRejected => {}
            Err(e) => {
                tracing::warn!(
                    subject = %subject,
                    error = %e,
                    "a request was answered 401 and the integrated api key could not be checked again; it is not marked"
                );
                return Err(e);
            }
        }
        record.status = CredentialStatus::NeedsReplacement;
        record.status_reason = Some(REJECTED_REASON.to_owned());
        record.updated_at = self.clock.timestamp();
        match self
            .store
            .put_record(&store_key, &record, Precondition::Version(version))
            .await
        {
            Ok(new_version) => {
                self.cache_store(subject, &record, new_version);
                self.emit(ApiKeyEvent::NeedsReplacement {
                    environment: self.environment().clone(),
                    integration_id: Some(self.config.integration_id().clone()),
                    subject: *subject,
                    kind: ApiKeyKind::Integrated,
                });
                tracing::warn!(
                    subject = %subject,
                    generation,
                    "pleo rejected the integrated api key; it is marked as needing replacement"
                );
                Ok(false)
            }
            Err(source) if is_conflict(&source) => {
                // Changed meanwhile (replaced or marked by another replica): adopt it.
                match self.read(&store_key, subject).await? {
                    Some((stored, version)) => {
                        let entry = self.cache_store(subject, &stored, version);
                        Ok(stored.generation != generation && entry.is_usable())
                    }
                    None => {
                        self.cache_remove(subject);
                        Ok(false)
                    }
                }
            }
            Err(source) => Err(Error::store(source)),
        }
    }
}

#[async_trait]
impl CredentialProvider for IntegratedKeys {
    fn environment(&self) -> &EnvironmentName {
        self.inner.environment()
    }

    /// The stored key of `subject` (a company): from memory while the cache entry is fresh,
    /// else from the store. `NotFound`, `NeedsReplacement` or `Revoked` when there is no usable
    /// key.
    async fn credential_for(&self, subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        self.inner
            .credential(subject)
            .await
            .map(Arc::new)
            .map_err(Into::into)
    }

    /// Asks Pleo about the key again (`GET /v1/introspect`, one re-validation per company at a
    /// time). If Pleo accepts it, the 401 came from elsewhere (a proxy, a passing fault): the
    /// key stays valid and `true` lets the request be retried once. If Pleo rejects it too, the
    /// stored key is marked `NeedsReplacement` with the reason (compare-and-swap, only if `id`
    /// is still the current key, so replicas write it once) and
    /// [`ApiKeyEvent::NeedsReplacement`] is emitted; `true` then only when a newer key is
    /// already available. If Pleo cannot be asked, the error is returned and nothing is marked.
    async fn rejected(&self, subject: &Subject, id: &CredentialId) -> pleo_auth_core::Result<bool> {
        self.inner.reject(subject, id).await.map_err(Into::into)
    }
}
