//! Standalone API keys: made by hand in the Pleo web app, for internal tooling and staging
//! exploration; one environment, one company or organisation.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use pleo_auth_core::{
    ApiKey, ApiKeyCredential, ApiKeyKind, AuthorizationHeader, Change, ClientId, Credential,
    CredentialId, CredentialKey, CredentialKind, CredentialProvider, CredentialStatus, DynClock,
    DynSecretStore, Environment, EnvironmentName, Precondition, RecordStoreExt, ScopeSet, StoreKey,
    Subject, SystemClock, UpdateError, Updated, Version, layout,
};
use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{ApiKeyEvent, ApiKeyEventSink};
use crate::format::{masked, validate_key_format};
use crate::info::KeyInfo;
use crate::pleo::PleoApi;

/// The environment variable [`StandaloneKey::from_env`] reads.
pub const DEFAULT_ENV_VAR: &str = "PLEO_API_KEY";

/// What `/v1/introspect` said about the key, learned once.
#[derive(Debug, Clone)]
struct Learned {
    subject: Subject,
    scopes: ScopeSet,
}

/// Where a stored key lives, so a rejection can be recorded there.
struct Binding {
    store: DynSecretStore,
    key: StoreKey,
    integration_id: ClientId,
    version: Mutex<Version>,
}

/// One Standalone API key, bound to one environment and to the subject Pleo names for it.
///
/// The subject is learned with `GET /v1/introspect` on first use and cached for the life of
/// the value (a key loaded from the store knows it already). The key is only ever sent to the
/// API of the environment it was created with, so a staging key never reaches production.
///
/// As a [`CredentialProvider`] it answers only for its own subject: a company key for its
/// company, an organisation key for `Subject::Organisation` (the HTTP layer then names the
/// company with an explicit `company_id`). Any other subject is refused with
/// [`ErrorKind::SubjectNotCovered`]. After Pleo answers 401 once, the key is never sent again
/// ([`ErrorKind::NeedsReplacement`]).
pub struct StandaloneKey {
    pleo: PleoApi,
    key: ApiKey,
    header: AuthorizationHeader,
    id: CredentialId,
    learned: OnceCell<Learned>,
    rejected: AtomicBool,
    not_an_api_key: AtomicBool,
    binding: Option<Binding>,
    clock: DynClock,
    events: Option<Arc<dyn ApiKeyEventSink>>,
}

impl fmt::Debug for StandaloneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandaloneKey")
            .field("environment", self.environment().name())
            .field("subject", &self.learned.get().map(|l| l.subject))
            .field("rejected", &self.rejected.load(Ordering::Relaxed))
            .field("stored", &self.binding.as_ref().map(|b| b.key.as_str()))
            .finish_non_exhaustive()
    }
}

impl StandaloneKey {
    /// A key for `environment`, after checking its format. Nothing is sent until first use.
    pub fn new(environment: Environment, key: ApiKey) -> Result<Self> {
        validate_key_format(&key)?;
        Ok(Self {
            pleo: PleoApi::new(environment, None)?,
            header: AuthorizationHeader::basic_api_key(&key),
            key,
            id: CredentialId::next(),
            learned: OnceCell::new(),
            rejected: AtomicBool::new(false),
            not_an_api_key: AtomicBool::new(false),
            binding: None,
            clock: Arc::new(SystemClock),
            events: None,
        })
    }

    /// The key in the [`DEFAULT_ENV_VAR`] (`PLEO_API_KEY`) environment variable, for
    /// `environment`. The environment is never guessed from the key: name it explicitly.
    pub fn from_env(environment: Environment) -> Result<Self> {
        Self::from_env_var(environment, DEFAULT_ENV_VAR)
    }

    /// The key in the environment variable `name`, for `environment`.
    pub fn from_env_var(environment: Environment, name: &str) -> Result<Self> {
        Self::from_var_value(environment, name, std::env::var_os(name))
    }

    fn from_var_value(
        environment: Environment,
        name: &str,
        value: Option<OsString>,
    ) -> Result<Self> {
        let value = value.ok_or_else(|| {
            Error::new(ErrorKind::MissingEnvVar {
                name: name.to_owned(),
            })
        })?;
        let key = value.into_string().map_err(|_| {
            Error::new(ErrorKind::InvalidKeyFormat {
                reason: "contains non-ascii characters",
            })
        })?;
        Self::new(environment, ApiKey::new(key))
    }

    /// The key stored by [`save`](Self::save) under (environment, `integration_id`, `subject`).
    ///
    /// Refuses a record of an Integrated key, of another environment ([`ErrorKind::WrongEnvironment`])
    /// or that is not active ([`ErrorKind::NeedsReplacement`], [`ErrorKind::Revoked`]).
    pub async fn from_store(
        store: DynSecretStore,
        environment: Environment,
        integration_id: ClientId,
        subject: Subject,
    ) -> Result<Self> {
        let key = layout::api_key(&CredentialKey::new(
            environment.name().clone(),
            integration_id.clone(),
            subject,
        ));
        let Some((record, version)) = store
            .get_record::<ApiKeyCredential>(&key)
            .await
            .map_err(Error::store)?
        else {
            return Err(Error::new(ErrorKind::NotFound { subject }));
        };
        if record.environment != *environment.name() {
            return Err(Error::new(ErrorKind::WrongEnvironment {
                expected: environment.name().clone(),
                actual: record.environment,
            }));
        }
        if record.kind != ApiKeyKind::Standalone {
            return Err(Error::new(ErrorKind::Corrupt {
                subject,
                reason: "it holds an integrated key",
            }));
        }
        if record.subject != subject || record.integration_id != integration_id {
            return Err(Error::new(ErrorKind::Corrupt {
                subject,
                reason: "it names another subject or integration",
            }));
        }
        let api_key = match (record.status, record.key) {
            (CredentialStatus::Active, Some(api_key)) => api_key,
            (CredentialStatus::Active, None) | (CredentialStatus::Revoked, _) => {
                return Err(Error::new(ErrorKind::Revoked { subject }));
            }
            _ => return Err(Error::new(ErrorKind::NeedsReplacement { subject })),
        };
        let mut standalone = Self::new(environment, api_key)?;
        standalone.learned = OnceCell::new_with(Some(Learned {
            subject,
            scopes: record.scopes,
        }));
        standalone.binding = Some(Binding {
            store,
            key,
            integration_id,
            version: Mutex::new(version),
        });
        Ok(standalone)
    }

    /// Uses `client` for Pleo calls instead of the default transport client. It must not
    /// follow redirects.
    pub fn with_http_client(mut self, client: reqwest::Client) -> Result<Self> {
        self.pleo = PleoApi::new(self.pleo.environment().clone(), Some(client))?;
        Ok(self)
    }

    /// The clock for stored timestamps (default: the system clock).
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.clock = clock;
        self
    }

    /// Where [`ApiKeyEvent`]s go (default: only `tracing`).
    pub fn with_events(mut self, sink: impl ApiKeyEventSink) -> Self {
        self.events = Some(Arc::new(sink));
        self
    }

    /// The environment the key belongs to.
    pub fn environment(&self) -> &Environment {
        self.pleo.environment()
    }

    /// The key for display (see [`masked`](crate::masked)).
    pub fn masked(&self) -> String {
        masked(&self.key)
    }

    /// The company or organisation the key acts for, asking Pleo on first use.
    pub async fn subject(&self) -> Result<Subject> {
        self.learn().await.map(|l| l.subject)
    }

    /// The scopes the key carries, asking Pleo on first use.
    pub async fn scopes(&self) -> Result<ScopeSet> {
        self.learn().await.map(|l| l.scopes.clone())
    }

    /// Validates the key with Pleo (if not done yet) and stores it under (environment,
    /// `integration_id`, its subject), replacing a key stored there before. Later,
    /// [`from_store`](Self::from_store) loads it, and a 401 marks the stored record.
    pub async fn save(
        &mut self,
        store: DynSecretStore,
        integration_id: ClientId,
    ) -> Result<KeyInfo> {
        let learned = self.learn().await?.clone();
        let environment = self.environment().name().clone();
        let key = layout::api_key(&CredentialKey::new(
            environment.clone(),
            integration_id.clone(),
            learned.subject,
        ));
        let existing = store
            .get_record::<ApiKeyCredential>(&key)
            .await
            .map_err(Error::store)?;
        if let Some((old, _)) = &existing
            && old.kind != ApiKeyKind::Standalone
        {
            return Err(Error::new(ErrorKind::Corrupt {
                subject: learned.subject,
                reason: "it holds an integrated key",
            }));
        }
        let now = self.clock.timestamp();
        let record = ApiKeyCredential {
            environment,
            integration_id: integration_id.clone(),
            subject: learned.subject,
            tenant: existing.as_ref().and_then(|(old, _)| old.tenant.clone()),
            kind: ApiKeyKind::Standalone,
            status: CredentialStatus::Active,
            status_reason: None,
            key: Some(self.key.clone()),
            scopes: learned.scopes,
            generation: existing.as_ref().map_or(1, |(old, _)| old.generation + 1),
            created_at: existing.as_ref().map_or(now, |(old, _)| old.created_at),
            updated_at: now,
            settings: existing
                .as_ref()
                .map_or_else(BTreeMap::new, |(old, _)| old.settings.clone()),
        };
        let precondition = existing.map_or(Precondition::Absent, |(_, version)| {
            Precondition::Version(version)
        });
        let version = store
            .put_record(&key, &record, precondition)
            .await
            .map_err(|source| Error::record_write(record.subject, source))?;
        self.binding = Some(Binding {
            store,
            key,
            integration_id,
            version: Mutex::new(version),
        });
        Ok(KeyInfo::from_record(&record))
    }

    async fn learn(&self) -> Result<&Learned> {
        if self.not_an_api_key.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::NotAnApiKey));
        }
        if self.rejected.load(Ordering::Acquire) {
            return Err(self.rejected_error());
        }
        self.learned
            .get_or_try_init(|| async {
                match self.pleo.introspect_key(&self.key).await {
                    Ok(info) => Ok(Learned {
                        subject: info.subject,
                        scopes: info.scopes,
                    }),
                    // Both are final: the key is not sent again.
                    Err(err) => {
                        match err.kind() {
                            ErrorKind::KeyRejected => self.rejected.store(true, Ordering::Release),
                            ErrorKind::NotAnApiKey => {
                                self.not_an_api_key.store(true, Ordering::Release);
                            }
                            _ => {}
                        }
                        Err(err)
                    }
                }
            })
            .await
    }

    fn rejected_error(&self) -> Error {
        match self.learned.get() {
            Some(learned) => Error::new(ErrorKind::NeedsReplacement {
                subject: learned.subject,
            }),
            None => Error::new(ErrorKind::KeyRejected),
        }
    }

    async fn credential(&self, subject: &Subject) -> Result<Credential> {
        let learned = self.learn().await?;
        if self.rejected.load(Ordering::Acquire) {
            return Err(self.rejected_error());
        }
        if *subject != learned.subject {
            return Err(Error::new(ErrorKind::SubjectNotCovered {
                requested: *subject,
                key_subject: learned.subject,
            }));
        }
        Ok(Credential {
            id: self.id.clone(),
            header: self.header.clone(),
            subject: learned.subject,
            environment: self.environment().name().clone(),
            scopes: learned.scopes.clone(),
            kind: CredentialKind::StandaloneApiKey,
        })
    }

    async fn reject(&self, id: &CredentialId) -> Result<bool> {
        if *id != self.id || self.rejected.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        let Some(subject) = self.learned.get().map(|l| l.subject) else {
            return Ok(false);
        };
        tracing::warn!(
            environment = %self.environment().name(),
            subject = %subject,
            "pleo rejected the standalone api key; it is no longer sent"
        );
        self.emit(ApiKeyEvent::NeedsReplacement {
            environment: self.environment().name().clone(),
            integration_id: self.binding.as_ref().map(|b| b.integration_id.clone()),
            subject,
            kind: ApiKeyKind::Standalone,
        });
        if let Some(binding) = &self.binding {
            self.mark_stored(binding).await?;
        }
        Ok(false)
    }

    /// Marks the stored record `NeedsReplacement` if it still holds this key's version.
    async fn mark_stored(&self, binding: &Binding) -> Result<()> {
        let expected = binding
            .version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let now = self.clock.timestamp();
        let updated = binding
            .store
            .update::<ApiKeyCredential, _, Infallible, _>(&binding.key, |read| {
                Ok(match read {
                    Some((mut record, version)) if version == expected => {
                        record.status = CredentialStatus::NeedsReplacement;
                        record.status_reason = Some("pleo answered 401 to the api key".to_owned());
                        record.updated_at = now;
                        (Change::Put(record), ())
                    }
                    // Absent, or saved again since this value was loaded (also by whoever
                    // changed it meanwhile): not ours to mark.
                    _ => (Change::Keep, ()),
                })
            })
            .await;
        match updated {
            Ok((Updated::Written(_, new_version), ())) => {
                *binding
                    .version
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = new_version;
                Ok(())
            }
            Ok((Updated::Deleted | Updated::Kept, ())) => Ok(()),
            Err(UpdateError::Read(source) | UpdateError::Write(source)) => {
                Err(Error::store(source))
            }
            Err(UpdateError::Contended) => Ok(()),
            Err(UpdateError::Rejected(never)) => match never {},
        }
    }

    fn emit(&self, event: ApiKeyEvent) {
        if let Some(sink) = &self.events {
            sink.emit(&event);
        }
    }
}

#[async_trait]
impl CredentialProvider for StandaloneKey {
    fn environment(&self) -> &EnvironmentName {
        self.pleo.environment().name()
    }

    /// The key, if `subject` is exactly the key's subject (learned on first use).
    async fn credential_for(&self, subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        self.credential(subject)
            .await
            .map(Arc::new)
            .map_err(Into::into)
    }

    /// Stops sending the key, marks a stored record `NeedsReplacement` and emits
    /// [`ApiKeyEvent::NeedsReplacement`]. Always `false`: a Standalone key has no newer value
    /// to retry with.
    async fn rejected(
        &self,
        _subject: &Subject,
        id: &CredentialId,
    ) -> pleo_auth_core::Result<bool> {
        self.reject(id).await.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pleo_auth_core::ErrorKind;

    fn env() -> Environment {
        Environment::custom("sandbox", "http://127.0.0.1:9", "http://127.0.0.1:9").unwrap()
    }

    #[test]
    fn env_var_values_are_validated() {
        let err = StandaloneKey::from_var_value(env(), "PLEO_API_KEY", None).unwrap_err();
        assert_eq!(err.kind().core_kind(), ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "environment variable PLEO_API_KEY is not set"
        );

        let err = StandaloneKey::from_var_value(
            env(),
            "PLEO_API_KEY",
            Some(OsString::from("CANARY-0123456789abcdef\n")),
        )
        .unwrap_err();
        assert_eq!(err.kind().core_kind(), ErrorKind::InvalidInput);
        assert!(!format!("{err} {err:?}").contains("CANARY"));

        let key = StandaloneKey::from_var_value(
            env(),
            "PLEO_API_KEY",
            Some(OsString::from("CANARY-0123456789abcdef")),
        )
        .unwrap();
        assert_eq!(key.masked(), "****cdef");
        assert_eq!(key.environment().name().as_str(), "sandbox");
        let shown = format!("{key:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
    }
}
