//! Values for tests that write to a store.

use crate::{SecretBytes, StoreKey};

/// The bytes of `s` as a secret value, for tests that write to a store.
pub fn bytes(s: &str) -> SecretBytes {
    SecretBytes::new(s.as_bytes().to_vec())
}

/// A store key made of `parts`; panics on a part that is not a valid key segment.
pub fn key(parts: &[&str]) -> StoreKey {
    StoreKey::from_parts(parts).expect("valid key parts")
}
