//! The per-call deadline covers the credential provider too: a provider that hangs (its store
//! stalled) cannot hold a caller past the deadline, on the client or the middleware path.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use pleo_auth_core::{
    Credential, CredentialId, CredentialProvider, EnvironmentName, ErrorKind, Subject,
};
use pleo_auth_http::{PleoClient, RetryPolicy, Target};

/// Hangs in `credential_for` (or only in `rejected`) until the test ends.
#[derive(Debug)]
struct Hanging {
    environment: EnvironmentName,
    credential: Option<Credential>,
    calls: AtomicU64,
}

#[async_trait]
impl CredentialProvider for Hanging {
    fn environment(&self) -> &EnvironmentName {
        &self.environment
    }

    async fn credential_for(&self, _subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.credential {
            Some(credential) => Ok(Arc::new(credential.clone())),
            None => std::future::pending().await,
        }
    }

    async fn rejected(
        &self,
        _subject: &Subject,
        _id: &CredentialId,
    ) -> pleo_auth_core::Result<bool> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_provider_fails_the_call_by_its_deadline() {
    let sandbox = sandbox().await;
    let deadline = Duration::from_millis(300);
    // No credential at all, then a credential the API refuses (the rejection report hangs).
    let refused = key_credential("CANARY-refused-key-0000000000", dk(), env_name(&sandbox));
    for credential in [None, Some(refused)] {
        for variant in VARIANTS {
            let provider = Arc::new(Hanging {
                environment: env_name(&sandbox),
                credential: credential.clone(),
                calls: AtomicU64::new(0),
            });
            let client = PleoClient::builder(environment(&sandbox), provider.clone())
                .retry_policy(RetryPolicy::default().with_deadline(Some(deadline)))
                .build()
                .unwrap();
            let api = api(variant, client);
            let started = Instant::now();
            let err = tokio::time::timeout(
                Duration::from_secs(5),
                api.get("/v1/export-jobs", Target::company(dk())),
            )
            .await
            .expect("the call ended by its deadline")
            .unwrap_err();
            let took = started.elapsed();
            assert!(
                took < deadline + Duration::from_millis(200),
                "{variant:?}: {took:?}"
            );
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{variant:?}: {err:?}");
            assert!(err.is_retryable());
            assert_clean(&err);
            assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
        }
    }
}
