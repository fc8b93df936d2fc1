//! Subject URNs, scope lists and store keys: parse or fail with `InvalidInput`; what parses
//! prints back to itself.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use pleo_auth_core::{ErrorKind, ScopeSet, StoreKey, Subject};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Subject::from_str(text) {
        Ok(subject) => assert_eq!(Subject::from_str(&subject.to_string()).unwrap(), subject),
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput),
    }
    match ScopeSet::from_str(text) {
        Ok(scopes) => assert_eq!(ScopeSet::from_str(&scopes.to_string()).unwrap(), scopes),
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput),
    }
    if let Ok(key) = StoreKey::parse(text) {
        assert!(!key.as_str().contains(".."));
        let _ = key.parts();
    }
    let parts: Vec<&str> = text.split('\u{1}').collect();
    if let Ok(key) = StoreKey::from_parts(parts.iter().copied()) {
        assert_eq!(key.parts(), parts);
    }
});
