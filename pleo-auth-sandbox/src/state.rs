//! The sandbox's mutable state and the operations shared by the HTTP and Rust interfaces.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Map;
use url::Url;
use uuid::Uuid;

use crate::admin::RevokeTarget;
use crate::config::{ClientRegistration, Config, Subject, validate_client};
use crate::error::SandboxError;
use crate::faults::{Endpoint, Fault, FaultQueue};
use crate::records::{
    AccessRecord, CodeRecord, ExportJob, Grant, Installation, IssuedTokens, KeyKind, KeyRecord,
    PendingConsent, RefreshRecord, grant_label,
};
use crate::rewrite::{RewriteSlot, TokenResponseRewrite};
use crate::secrets::{Digest, RandomUnavailable, digest, random_secret, random_uuid};
use crate::shape::ServerShape;
use crate::stats::{ApiRequestRecord, GrantStats, RevocationCause, Stats};

/// State shared by every request handler and the [`SandboxHandle`](crate::SandboxHandle).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Base URL of the server, with a trailing slash.
    pub(crate) base_url: Url,
    inner: Mutex<Inner>,
}

/// Everything that changes while the sandbox runs. Guarded by one mutex, held briefly.
#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) clock_offset: Duration,
    pub(crate) auto_approve: Option<Uuid>,
    pub(crate) clients: HashMap<String, ClientRegistration>,
    pub(crate) consents: HashMap<Digest, PendingConsent>,
    pub(crate) codes: HashMap<Digest, CodeRecord>,
    pub(crate) grants: HashMap<u64, Grant>,
    pub(crate) access: HashMap<Digest, AccessRecord>,
    pub(crate) refresh: HashMap<Digest, RefreshRecord>,
    pub(crate) keys: HashMap<Digest, KeyRecord>,
    /// Installations by (owner, company); the owner is a client ID or `standalone-key:<key id>`.
    pub(crate) installations: HashMap<(String, Uuid), Installation>,
    pub(crate) export_jobs: Vec<ExportJob>,
    pub(crate) next_grant: u64,
    pub(crate) next_key: u64,
    pub(crate) stats: Stats,
    pub(crate) log: Vec<ApiRequestRecord>,
    pub(crate) faults: FaultQueue,
    /// How the authorization server presents itself; replaced whole at run time.
    pub(crate) shape: Arc<ServerShape>,
    pub(crate) token_rewrite: RewriteSlot,
}

impl Inner {
    /// The sandbox's notion of now: wall-clock time plus the advanced offset.
    pub(crate) fn now(&self) -> SystemTime {
        SystemTime::now() + self.clock_offset
    }

    /// Looks up a usable access token.
    pub(crate) fn live_access(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(&AccessRecord, &Grant), &'static str> {
        let record = self
            .access
            .get(&digest(token))
            .ok_or("the access token is not known")?;
        let grant = self
            .grants
            .get(&record.grant)
            .ok_or("the access token is not known")?;
        if grant.revoked.is_some() {
            Err("the access token was revoked")
        } else if record.generation != grant.generation {
            Err("the access token was superseded by a refresh")
        } else if !grant.access_valid || record.revoked {
            Err("the access token was revoked")
        } else if now >= record.expires_at {
            Err("the access token expired")
        } else {
            Ok((record, grant))
        }
    }

    /// Looks up a usable refresh token (for introspection).
    pub(crate) fn live_refresh(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Option<(&RefreshRecord, &Grant)> {
        let record = self.refresh.get(&digest(token))?;
        let grant = self.grants.get(&record.grant)?;
        (grant.revoked.is_none()
            && record.generation == grant.generation
            && now < record.expires_at)
            .then_some((record, grant))
    }

    /// Starts a new grant.
    pub(crate) fn new_grant(
        &mut self,
        client_id: &str,
        subject: Subject,
        scopes: Vec<String>,
    ) -> u64 {
        self.next_grant += 1;
        let id = self.next_grant;
        self.grants.insert(
            id,
            Grant {
                client_id: client_id.to_owned(),
                subject,
                scopes,
                generation: 0,
                access_valid: true,
                refreshes: 0,
                revoked: None,
            },
        );
        id
    }

    /// Issues an access and refresh token of the grant's current generation.
    pub(crate) fn issue_tokens(
        &mut self,
        config: &Config,
        grant_id: u64,
        scopes: Vec<String>,
        now: SystemTime,
    ) -> Result<IssuedTokens, RandomUnavailable> {
        let access_token = random_secret(&config.secret_prefix, "at_")?;
        let refresh_token = random_secret(&config.secret_prefix, "rt_")?;
        let (access_jti, refresh_jti) = (random_uuid()?, random_uuid()?);
        let generation = self.grants.get(&grant_id).map_or(0, |g| g.generation);
        self.access.insert(
            digest(&access_token),
            AccessRecord {
                grant: grant_id,
                generation,
                issued_at: now,
                expires_at: now + config.access_ttl,
                jti: access_jti,
                scopes: scopes.clone(),
                revoked: false,
            },
        );
        self.refresh.insert(
            digest(&refresh_token),
            RefreshRecord {
                grant: grant_id,
                generation,
                issued_at: now,
                expires_at: now + config.refresh_ttl,
                jti: refresh_jti,
            },
        );
        Ok(IssuedTokens {
            grant: grant_id,
            access_token,
            refresh_token,
            expires_in: config.access_ttl.as_secs(),
            scopes,
        })
    }

    /// Revokes a whole grant; returns whether it was live.
    pub(crate) fn revoke_grant(&mut self, grant_id: u64, cause: RevocationCause) -> bool {
        match self.grants.get_mut(&grant_id) {
            Some(grant) if grant.revoked.is_none() => {
                grant.revoked = Some(cause);
                *self.stats.grant_revocations.entry(cause).or_default() += 1;
                tracing::debug!(grant = %grant_label(grant_id), ?cause, "grant revoked");
                true
            }
            _ => false,
        }
    }

    /// Creates an installation for (owner, company) unless one exists.
    pub(crate) fn ensure_installation(
        &mut self,
        owner: &str,
        client_id: Option<&str>,
        company: Uuid,
        now: SystemTime,
    ) -> Result<(), RandomUnavailable> {
        if let Entry::Vacant(slot) = self.installations.entry((owner.to_owned(), company)) {
            slot.insert(Installation {
                id: random_uuid()?,
                client_id: client_id.map(str::to_owned),
                company,
                status: "AUTHORIZED".to_owned(),
                error_code: None,
                metadata: Map::new(),
                created_at: now,
                updated_at: now,
            });
        }
        Ok(())
    }

    /// Deletes an installation and revokes every credential of that owner for that company.
    pub(crate) fn delete_installation(
        &mut self,
        config: &Config,
        owner: &str,
        company: Uuid,
    ) -> bool {
        if self
            .installations
            .remove(&(owner.to_owned(), company))
            .is_none()
        {
            return false;
        }
        let doomed: Vec<u64> = self
            .grants
            .iter()
            .filter(|(_, g)| g.client_id == owner && config.covers(g.subject, company))
            .map(|(id, _)| *id)
            .collect();
        for id in doomed {
            self.revoke_grant(id, RevocationCause::InstallationDeleted);
        }
        for key in self.keys.values_mut() {
            if matches!(&key.kind, KeyKind::Integrated { client_id } if client_id == owner)
                && key.subject == Subject::Company(company)
            {
                key.revoked = true;
            }
        }
        true
    }

    /// Removes expired consents and long-expired codes once the maps grow.
    pub(crate) fn prune(&mut self, now: SystemTime) {
        if self.consents.len() > 1024 {
            self.consents.retain(|_, c| c.expires_at > now);
        }
        if self.codes.len() > 4096 {
            let horizon = Duration::from_secs(24 * 3600);
            self.codes.retain(|_, c| c.expires_at + horizon > now);
        }
    }

    /// The grants a revocation target names.
    fn targets(&self, config: &Config, target: &RevokeTarget) -> Vec<u64> {
        match target {
            RevokeTarget::Token(token) => {
                let d = digest(token);
                self.access
                    .get(&d)
                    .map(|r| r.grant)
                    .or_else(|| self.refresh.get(&d).map(|r| r.grant))
                    .into_iter()
                    .collect()
            }
            RevokeTarget::Grant(label) => self
                .grants
                .keys()
                .filter(|id| grant_label(**id) == *label)
                .copied()
                .collect(),
            RevokeTarget::Client { client_id, subject } => self
                .grants
                .iter()
                .filter(|(_, g)| {
                    g.client_id == *client_id
                        && (g.subject.id() == *subject || config.covers(g.subject, *subject))
                })
                .map(|(id, _)| *id)
                .collect(),
            RevokeTarget::All => self.grants.keys().copied().collect(),
        }
    }
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        base_url: Url,
        clients: Vec<ClientRegistration>,
        auto_approve: Option<Uuid>,
        shape: ServerShape,
    ) -> Self {
        let inner = Inner {
            auto_approve,
            shape: Arc::new(shape),
            clients: clients.into_iter().map(|c| (c.id.clone(), c)).collect(),
            ..Inner::default()
        };
        Self {
            config,
            base_url,
            inner: Mutex::new(inner),
        }
    }

    /// Locks the state. A panic while locked cannot leave it half-updated in a way that matters
    /// for a test emulator, so a poisoned lock is used as is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The audience string: the base URL without its trailing slash.
    pub(crate) fn audience(&self) -> String {
        self.base_url.as_str().trim_end_matches('/').to_owned()
    }

    /// The issuer: the shape's, else the audience string.
    pub(crate) fn issuer(&self, shape: &ServerShape) -> String {
        shape.issuer.clone().unwrap_or_else(|| self.audience())
    }

    /// The current server shape.
    pub(crate) fn shape(&self) -> Arc<ServerShape> {
        Arc::clone(&self.lock().shape)
    }

    pub(crate) fn set_shape(&self, shape: ServerShape) -> Result<(), SandboxError> {
        shape.validate()?;
        self.lock().shape = Arc::new(shape);
        Ok(())
    }

    pub(crate) fn set_token_rewrite(&self, rewrite: Option<TokenResponseRewrite>) {
        self.lock().token_rewrite = RewriteSlot(rewrite);
    }

    /// Classifies a request path with the current shape, counts the hit and takes the fault it
    /// should get, if any. `None` for the administration paths, which are never faulted.
    pub(crate) fn take_fault(&self, path: &str) -> Option<(Endpoint, Option<Fault>)> {
        let mut inner = self.lock();
        let endpoint = Endpoint::classify(path, &inner.shape)?;
        *inner.stats.endpoint_hits.entry(endpoint).or_default() += 1;
        let fault = inner.faults.take(endpoint);
        if fault.is_some() {
            *inner.stats.faults_injected.entry(endpoint).or_default() += 1;
        }
        Some((endpoint, fault))
    }

    pub(crate) fn inject_fault(&self, endpoint: Endpoint, fault: Fault, count: u32) {
        self.lock().faults.push(endpoint, fault, count);
    }

    pub(crate) fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub(crate) fn stats(&self) -> Stats {
        let inner = self.lock();
        let mut stats = inner.stats.clone();
        stats.grants = inner
            .grants
            .iter()
            .map(|(id, g)| {
                (
                    grant_label(*id),
                    GrantStats {
                        client_id: g.client_id.clone(),
                        subject_urn: g.subject.urn(),
                        refreshes: g.refreshes,
                        revoked: g.revoked,
                    },
                )
            })
            .collect();
        stats
    }

    pub(crate) fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.stats = Stats::default();
        for grant in inner.grants.values_mut() {
            grant.refreshes = 0;
        }
    }

    pub(crate) fn request_log(&self) -> Vec<ApiRequestRecord> {
        self.lock().log.clone()
    }

    pub(crate) fn clear_request_log(&self) {
        self.lock().log.clear();
    }

    pub(crate) fn take_request_log(&self) -> Vec<ApiRequestRecord> {
        std::mem::take(&mut self.lock().log)
    }

    pub(crate) fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += by;
    }

    /// (now, offset) of the sandbox clock.
    pub(crate) fn clock(&self) -> (SystemTime, Duration) {
        let inner = self.lock();
        (inner.now(), inner.clock_offset)
    }

    pub(crate) fn set_auto_approve(&self, subject: Option<Uuid>) -> Result<(), SandboxError> {
        if let Some(id) = subject
            && self.config.subject(id).is_none()
        {
            return Err(SandboxError::UnknownSubject(id));
        }
        self.lock().auto_approve = subject;
        Ok(())
    }

    pub(crate) fn register_client(&self, client: ClientRegistration) -> Result<(), SandboxError> {
        validate_client(&client).map_err(SandboxError::InvalidConfig)?;
        self.lock().clients.insert(client.id.clone(), client);
        Ok(())
    }

    pub(crate) fn grant_id(&self, token: &str) -> Option<String> {
        let inner = self.lock();
        inner
            .targets(&self.config, &RevokeTarget::Token(token.to_owned()))
            .first()
            .map(|id| grant_label(*id))
    }

    /// Revokes whole grants; returns how many were live.
    pub(crate) fn revoke_grants(&self, target: &RevokeTarget) -> usize {
        let mut inner = self.lock();
        let ids = inner.targets(&self.config, target);
        ids.into_iter()
            .filter(|id| inner.revoke_grant(*id, RevocationCause::Admin))
            .count()
    }

    /// Revokes the current access tokens of grants (their refresh tokens stay valid); returns how
    /// many live grants were affected.
    pub(crate) fn revoke_access_tokens(&self, target: &RevokeTarget) -> usize {
        let mut inner = self.lock();
        let ids = inner.targets(&self.config, target);
        let mut count = 0;
        for id in ids {
            if let Some(grant) = inner.grants.get_mut(&id)
                && grant.revoked.is_none()
                && grant.access_valid
            {
                grant.access_valid = false;
                count += 1;
            }
        }
        count
    }

    pub(crate) fn mint_integrated_key(
        &self,
        client_id: &str,
        company: Uuid,
    ) -> Result<String, SandboxError> {
        match self.config.subject(company) {
            Some(Subject::Company(_)) => {}
            Some(Subject::Organisation(_)) => return Err(SandboxError::NotACompany(company)),
            None => return Err(SandboxError::UnknownSubject(company)),
        }
        let key = random_secret(
            &self.config.secret_prefix,
            &format!("ik_{}_", self.config.environment_name),
        )
        .map_err(|_| SandboxError::Random)?;
        let mut inner = self.lock();
        let Some(client) = inner.clients.get(client_id) else {
            return Err(SandboxError::UnknownClient(client_id.to_owned()));
        };
        let (scopes, name) = (client.scopes.clone(), client.name.clone());
        let now = inner.now();
        inner
            .ensure_installation(client_id, Some(client_id), company, now)
            .map_err(|_| SandboxError::Random)?;
        for old in inner.keys.values_mut() {
            if matches!(&old.kind, KeyKind::Integrated { client_id: c } if c == client_id)
                && old.subject == Subject::Company(company)
            {
                old.revoked = true;
            }
        }
        inner.next_key += 1;
        let record = KeyRecord {
            id: format!("key-{:06}", inner.next_key),
            kind: KeyKind::Integrated {
                client_id: client_id.to_owned(),
            },
            name,
            subject: Subject::Company(company),
            scopes,
            expires_at: None,
            revoked: false,
        };
        inner.keys.insert(digest(&key), record);
        Ok(key)
    }

    pub(crate) fn mint_standalone_key(
        &self,
        subject: Uuid,
        scopes: Vec<String>,
        expires_in: Option<Duration>,
        name: Option<String>,
    ) -> Result<String, SandboxError> {
        let subject = self
            .config
            .subject(subject)
            .ok_or(SandboxError::UnknownSubject(subject))?;
        if scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(SandboxError::InvalidConfig(
                "scopes must be non-empty and contain no whitespace".to_owned(),
            ));
        }
        let key = random_secret(
            &self.config.secret_prefix,
            &format!("sk_{}_", self.config.environment_name),
        )
        .map_err(|_| SandboxError::Random)?;
        let mut inner = self.lock();
        let now = inner.now();
        inner.next_key += 1;
        let record = KeyRecord {
            id: format!("key-{:06}", inner.next_key),
            kind: KeyKind::Standalone,
            name: name.unwrap_or_else(|| "Standalone API key".to_owned()),
            subject,
            scopes,
            expires_at: expires_in.map(|d| now + d),
            revoked: false,
        };
        inner.keys.insert(digest(&key), record);
        Ok(key)
    }

    pub(crate) fn revoke_api_key(&self, key: &str) -> bool {
        match self.lock().keys.get_mut(&digest(key)) {
            Some(record) if !record.revoked => {
                record.revoked = true;
                true
            }
            _ => false,
        }
    }
}
