//! `CompositeProvider`: one [`CredentialProvider`] over several methods.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use async_trait::async_trait;
use pleo_auth_core::{
    Credential, CredentialId, CredentialProvider, DynClock, DynCredentialProvider, EnvironmentName,
    Error, ErrorKind, Result, Subject, SystemClock,
};

/// How long the provider that served a subject is asked first, before every provider is asked
/// again in order of preference.
pub const ROUTE_TTL: Duration = Duration::from_secs(60);

/// A [`CredentialProvider`] that asks several providers in order of preference, per subject:
/// the first that holds a credential for the subject answers.
///
/// [`PleoAuth`](crate::PleoAuth) builds one over the OAuth grants, the Integrated API keys and
/// the Standalone API key, in that order: a company's OAuth grant is used if one exists, else its
/// Integrated key, else the Standalone key.
///
/// - A provider that answers [`NotFound`](ErrorKind::NotFound), [`Revoked`](ErrorKind::Revoked)
///   or [`WrongCompany`](ErrorKind::WrongCompany) (a Standalone key of another company) has no
///   credential for the subject, and the next one is asked. Any other error is returned as is:
///   a grant that [needs reauthorization](ErrorKind::NeedsReauthorization) is reported, never
///   silently replaced by another method.
/// - The provider that served a subject is remembered for [`ROUTE_TTL`] and asked first, so a
///   request for an API-key company does not read the store for an OAuth grant every time.
/// - [`rejected`](CredentialProvider::rejected) goes to the provider that issued the rejected
///   credential; a rejection of a credential that has since been superseded answers that a
///   retry can help.
#[derive(Clone)]
pub struct CompositeProvider {
    inner: Arc<Inner>,
}

struct Inner {
    environment: EnvironmentName,
    providers: Vec<DynCredentialProvider>,
    clock: DynClock,
    routes: Routes,
}

/// Shards of the route table (a power of two).
const ROUTE_SHARDS: usize = 64;

/// Which provider served each subject last, read without locks on every request: shards of
/// copy-on-write maps from subject to a [`Route`] whose fields are atomics. A shard is copied
/// only when a subject is seen for the first time; a route changes in place.
struct Routes {
    shards: Box<[RouteShard]>,
    /// Serializes the copy-on-write of shards; never taken on the read path.
    write: Mutex<()>,
    /// The instant route times are counted from.
    epoch: Instant,
}

/// One shard of [`Routes`].
type RouteShard = ArcSwap<HashMap<Subject, Arc<Route>, foldhash::fast::RandomState>>;

/// What a fresh route says: which provider served the subject last, with which credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    provider: usize,
    credential: u64,
}

/// Which provider served a subject last, with which credential, since when (nanoseconds
/// after [`Routes::epoch`]).
#[derive(Debug)]
struct Route {
    provider: AtomicUsize,
    credential: AtomicU64,
    since: AtomicU64,
}

impl Routes {
    fn new(epoch: Instant) -> Self {
        Self {
            shards: (0..ROUTE_SHARDS)
                .map(|_| ArcSwap::from_pointee(HashMap::default()))
                .collect(),
            write: Mutex::new(()),
            epoch,
        }
    }

    fn shard(&self, subject: &Subject) -> &RouteShard {
        let id = match subject {
            Subject::Company(c) => c.as_uuid().as_u128(),
            Subject::Organisation(o) => o.as_uuid().as_u128(),
        };
        // The top bits of a Fibonacci product depend on every bit of the (random) UUID.
        let mixed = id.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        &self.shards[(mixed >> (u128::BITS - ROUTE_SHARDS.trailing_zeros())) as usize]
    }

    fn ticks(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn get(&self, subject: &Subject) -> Option<Arc<Route>> {
        self.shard(subject).load().get(subject).cloned()
    }

    /// The provider to ask first for `subject` and the credential it served last, if it served
    /// `subject` within [`ROUTE_TTL`].
    fn preferred(&self, subject: &Subject, now: Instant) -> Option<Served> {
        let shard = self.shard(subject).load();
        let route = shard.get(subject)?;
        let age = self
            .ticks(now)
            .saturating_sub(route.since.load(Ordering::Relaxed));
        (u128::from(age) < ROUTE_TTL.as_nanos()).then(|| Served {
            provider: route.provider.load(Ordering::Relaxed),
            credential: route.credential.load(Ordering::Acquire),
        })
    }

    /// Records that `provider` served `subject` with credential `id`, writing only what changed
    /// (a route is read by every core); the route is read through the shard, without cloning its
    /// `Arc`.
    fn remember(&self, subject: Subject, provider: usize, id: &CredentialId, now: Instant) {
        let now = self.ticks(now);
        if let Some(route) = self.shard(&subject).load().get(&subject) {
            if route.provider.load(Ordering::Relaxed) != provider
                || u128::from(now.saturating_sub(route.since.load(Ordering::Relaxed)))
                    >= ROUTE_TTL.as_nanos()
            {
                route.since.store(now, Ordering::Relaxed);
                route.provider.store(provider, Ordering::Relaxed);
            }
            if route.credential.load(Ordering::Acquire) != id.as_u64() {
                route.credential.store(id.as_u64(), Ordering::Release);
            }
            return;
        }
        let _write = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let shard = self.shard(&subject);
        let current = shard.load();
        let mut next = HashMap::clone(&current);
        next.insert(
            subject,
            Arc::new(Route {
                provider: AtomicUsize::new(provider),
                credential: AtomicU64::new(id.as_u64()),
                since: AtomicU64::new(now),
            }),
        );
        shard.store(Arc::new(next));
    }
}

impl fmt::Debug for CompositeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositeProvider")
            .field("environment", &self.inner.environment)
            .field("providers", &self.inner.providers)
            .finish_non_exhaustive()
    }
}

impl CompositeProvider {
    /// A provider over `providers`, most preferred first. Each must hold credentials of
    /// `environment`; otherwise this fails with [`WrongEnvironment`](ErrorKind::WrongEnvironment).
    pub fn new(
        environment: EnvironmentName,
        providers: Vec<DynCredentialProvider>,
    ) -> Result<Self> {
        if let Some(other) = providers.iter().find(|p| *p.environment() != environment) {
            return Err(Error::new(
                ErrorKind::WrongEnvironment,
                format!(
                    "a provider holds credentials of environment {}, not {environment}",
                    other.environment()
                ),
            ));
        }
        Ok(Self::assemble(
            environment,
            providers,
            Arc::new(SystemClock),
        ))
    }

    fn assemble(
        environment: EnvironmentName,
        providers: Vec<DynCredentialProvider>,
        clock: DynClock,
    ) -> Self {
        let epoch = clock.instant();
        Self {
            inner: Arc::new(Inner {
                environment,
                providers,
                clock,
                routes: Routes::new(epoch),
            }),
        }
    }

    /// Uses `clock` for the route lifetime (default: the system clock).
    pub fn with_clock(self, clock: DynClock) -> Self {
        Self::assemble(
            self.inner.environment.clone(),
            self.inner.providers.clone(),
            clock,
        )
    }

    /// How many providers are asked.
    pub fn len(&self) -> usize {
        self.inner.providers.len()
    }

    /// Whether no provider is configured (every request then fails with `NotFound`).
    pub fn is_empty(&self) -> bool {
        self.inner.providers.is_empty()
    }
}

/// Whether a provider's error means it holds no credential for the subject.
fn holds_none(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NotFound | ErrorKind::Revoked | ErrorKind::WrongCompany
    )
}

#[async_trait]
impl CredentialProvider for CompositeProvider {
    fn environment(&self) -> &EnvironmentName {
        &self.inner.environment
    }

    async fn credential_for(&self, subject: &Subject) -> Result<Arc<Credential>> {
        // Route ages are counted in seconds (ROUTE_TTL): the coarse clock is precise enough.
        let now = self.inner.clock.coarse_instant();
        let count = self.inner.providers.len();
        let preferred = self.inner.routes.preferred(subject, now);
        let first = preferred.map(|served| served.provider);
        let order = first
            .into_iter()
            .chain((0..count).filter(|&i| Some(i) != first));
        let mut revoked = None;
        for index in order {
            match self.inner.providers[index].credential_for(subject).await {
                Ok(credential) => {
                    let served = Served {
                        provider: index,
                        credential: credential.id.as_u64(),
                    };
                    // A hit the fresh route already describes needs no second look at it.
                    if preferred != Some(served) {
                        self.inner
                            .routes
                            .remember(*subject, index, &credential.id, now);
                    }
                    return Ok(credential);
                }
                Err(e) if holds_none(e.kind()) => {
                    if e.kind() == ErrorKind::Revoked && revoked.is_none() {
                        revoked = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(revoked.unwrap_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no OAuth grant or API key is stored for {subject} in environment {}",
                    self.inner.environment
                ),
            )
        }))
    }

    async fn rejected(&self, subject: &Subject, id: &CredentialId) -> Result<bool> {
        let route = self.inner.routes.get(subject);
        match route {
            Some(route) if route.credential.load(Ordering::Acquire) == id.as_u64() => {
                let provider = route.provider.load(Ordering::Relaxed);
                self.inner.providers[provider].rejected(subject, id).await
            }
            // A newer credential was handed out since the rejected one: a retry uses it.
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use pleo_auth_core::{AuthorizationHeader, CredentialKind, ManualClock, ScopeSet};

    use super::*;

    /// A provider that serves `subject` only, or fails with `failure` for everything.
    #[derive(Debug)]
    struct Fixed {
        environment: EnvironmentName,
        serves: Option<Subject>,
        failure: ErrorKind,
        kind: CredentialKind,
        asked: AtomicUsize,
        rejected: AtomicUsize,
    }

    impl Fixed {
        fn new(serves: Option<Subject>, failure: ErrorKind, kind: CredentialKind) -> Arc<Self> {
            Arc::new(Self {
                environment: EnvironmentName::new("sandbox").unwrap(),
                serves,
                failure,
                kind,
                asked: AtomicUsize::new(0),
                rejected: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait]
    impl CredentialProvider for Fixed {
        fn environment(&self) -> &EnvironmentName {
            &self.environment
        }

        async fn credential_for(&self, subject: &Subject) -> Result<Arc<Credential>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.serves == Some(*subject) {
                Ok(Arc::new(Credential {
                    id: CredentialId::next(),
                    header: AuthorizationHeader::new("Bearer CANARY"),
                    subject: *subject,
                    environment: self.environment.clone(),
                    scopes: ScopeSet::new(),
                    kind: self.kind,
                }))
            } else {
                Err(Error::new(self.failure, "no credential"))
            }
        }

        async fn rejected(&self, _: &Subject, _: &CredentialId) -> Result<bool> {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            Ok(false)
        }
    }

    fn company(n: u128) -> Subject {
        Subject::Company(pleo_auth_core::CompanyId::from_uuid(uuid::Uuid::from_u128(
            n,
        )))
    }

    fn composite(providers: Vec<DynCredentialProvider>, clock: &ManualClock) -> CompositeProvider {
        CompositeProvider::new(EnvironmentName::new("sandbox").unwrap(), providers)
            .unwrap()
            .with_clock(Arc::new(clock.clone()))
    }

    #[tokio::test]
    async fn the_first_provider_holding_a_credential_answers() {
        let (a, b) = (company(1), company(2));
        let oauth = Fixed::new(Some(a), ErrorKind::NotFound, CredentialKind::OAuth);
        let keys = Fixed::new(
            Some(b),
            ErrorKind::NotFound,
            CredentialKind::IntegratedApiKey,
        );
        let clock = ManualClock::new();
        let provider = composite(vec![oauth.clone(), keys.clone()], &clock);

        assert_eq!(
            provider.credential_for(&a).await.unwrap().kind,
            CredentialKind::OAuth
        );
        assert_eq!(
            provider.credential_for(&b).await.unwrap().kind,
            CredentialKind::IntegratedApiKey
        );
        // b's route is remembered: the OAuth provider is not asked again within the TTL.
        let asked = oauth.asked.load(Ordering::SeqCst);
        provider.credential_for(&b).await.unwrap();
        assert_eq!(oauth.asked.load(Ordering::SeqCst), asked);
        // After the TTL, the preferred method is asked first again.
        clock.advance(ROUTE_TTL);
        provider.credential_for(&b).await.unwrap();
        assert_eq!(oauth.asked.load(Ordering::SeqCst), asked + 1);

        let missing = provider.credential_for(&company(3)).await.unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn an_unusable_grant_is_reported_not_replaced() {
        let a = company(1);
        let oauth = Fixed::new(None, ErrorKind::NeedsReauthorization, CredentialKind::OAuth);
        let keys = Fixed::new(
            Some(a),
            ErrorKind::NotFound,
            CredentialKind::IntegratedApiKey,
        );
        let provider = composite(vec![oauth, keys.clone()], &ManualClock::new());
        let err = provider.credential_for(&a).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NeedsReauthorization);
        assert_eq!(keys.asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_revoked_grant_falls_through_and_is_reported_last() {
        let a = company(1);
        let oauth = Fixed::new(None, ErrorKind::Revoked, CredentialKind::OAuth);
        let keys = Fixed::new(None, ErrorKind::NotFound, CredentialKind::IntegratedApiKey);
        let provider = composite(vec![oauth, keys.clone()], &ManualClock::new());
        let err = provider.credential_for(&a).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Revoked);
        assert_eq!(keys.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn rejections_go_to_the_issuer_of_the_credential() {
        let (a, b) = (company(1), company(2));
        let oauth = Fixed::new(Some(a), ErrorKind::NotFound, CredentialKind::OAuth);
        let keys = Fixed::new(
            Some(b),
            ErrorKind::NotFound,
            CredentialKind::IntegratedApiKey,
        );
        let provider = composite(vec![oauth.clone(), keys.clone()], &ManualClock::new());
        let key_credential = provider.credential_for(&b).await.unwrap();
        assert!(!provider.rejected(&b, &key_credential.id).await.unwrap());
        assert_eq!(keys.rejected.load(Ordering::SeqCst), 1);
        assert_eq!(oauth.rejected.load(Ordering::SeqCst), 0);

        // A superseded credential: a retry with the newer one can help; nobody is told.
        let old = provider.credential_for(&a).await.unwrap();
        let _new = provider.credential_for(&a).await.unwrap();
        assert!(provider.rejected(&a, &old.id).await.unwrap());
        assert_eq!(oauth.rejected.load(Ordering::SeqCst), 0);
        // A subject never served: nothing to retry.
        assert!(
            !provider
                .rejected(&company(9), &CredentialId::next())
                .await
                .unwrap()
        );
    }

    #[test]
    fn providers_of_another_environment_are_refused() {
        let other = Arc::new(Fixed {
            environment: EnvironmentName::new("staging").unwrap(),
            serves: None,
            failure: ErrorKind::NotFound,
            kind: CredentialKind::OAuth,
            asked: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        });
        let err = CompositeProvider::new(EnvironmentName::new("sandbox").unwrap(), vec![other])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongEnvironment);
    }
}
