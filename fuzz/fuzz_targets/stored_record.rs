//! Stored records of every type: decode, or fail closed (`Corrupt`, `UnsupportedSchema`) with
//! an error that quotes nothing of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pleo_auth_core::testing::find_leak;
use pleo_auth_core::{
    ApiKeyCredential, ErrorKind, OAuthGrant, PendingAuthorization, Record, TenantLink,
};

fn check<R: Record>(data: &[u8]) {
    if let Err(err) = R::decode(data) {
        assert!(matches!(
            err.kind(),
            ErrorKind::Corrupt | ErrorKind::UnsupportedSchema
        ));
        assert_eq!(find_leak(&format!("{err} {err:?}"), &["CANARY"]), None);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<OAuthGrant>(data);
    check::<ApiKeyCredential>(data);
    check::<PendingAuthorization>(data);
    check::<TenantLink>(data);
});
