//! What the benchmarks share: active grant records shaped like the sandbox's.

use std::time::Duration;

use pleo_auth_core::{
    AccessToken, CredentialKey, EnvironmentName, OAuthGrant, RefreshToken, StoreKey, Subject,
    Timestamp, layout, random_urlsafe,
};

/// The subject of company number `i`.
pub fn company(i: usize) -> Subject {
    format!("urn:pleo:company:0e000000-0000-4000-8000-{:012}", i + 1)
        .parse()
        .unwrap()
}

/// An active grant of `subject` for the client `bench` in `environment`, its tokens issued at
/// `now` (token strings have the sandbox's shape: `CANARY-at_` + 43 characters), and its key.
pub fn active_grant(
    environment: &EnvironmentName,
    subject: Subject,
    now: Timestamp,
) -> (StoreKey, OAuthGrant) {
    let record = OAuthGrant::connected(
        CredentialKey::new(environment.clone(), "bench".parse().unwrap(), subject),
        AccessToken::new(format!("CANARY-at_{}", random_urlsafe(32))),
        RefreshToken::new(format!("CANARY-rt_{}", random_urlsafe(32))),
        "users:read".parse().unwrap(),
        now,
        Duration::from_secs(24 * 3600),
    );
    let key = layout::oauth_grant(&CredentialKey::new(
        environment.clone(),
        "bench".parse().unwrap(),
        subject,
    ));
    (key, record)
}
