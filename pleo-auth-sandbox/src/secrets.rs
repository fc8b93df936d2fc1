//! Minted secrets: random tokens and IDs, and the digests and fingerprints that stand for them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// SHA-256 of a secret: the key under which the sandbox stores every secret it minted.
pub(crate) type Digest = [u8; 32];

/// The operating system's random number generator failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the operating system random number generator failed")]
pub(crate) struct RandomUnavailable;

/// `N` bytes from the operating system's random number generator.
fn random_bytes<const N: usize>() -> Result<[u8; N], RandomUnavailable> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|_| RandomUnavailable)?;
    Ok(buf)
}

/// A fresh secret: `prefix`, then `kind`, then 256 random bits in base64url.
pub(crate) fn random_secret(prefix: &str, kind: &str) -> Result<String, RandomUnavailable> {
    let bytes = random_bytes::<32>()?;
    Ok(format!("{prefix}{kind}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A random (version 4) UUID.
pub(crate) fn random_uuid() -> Result<Uuid, RandomUnavailable> {
    Ok(uuid::Builder::from_random_bytes(random_bytes::<16>()?).into_uuid())
}

/// SHA-256 of a string.
pub(crate) fn digest(s: &str) -> Digest {
    Sha256::digest(s.as_bytes()).into()
}

/// A short, stable, non-secret fingerprint of a secret (the first 16 hex digits of its SHA-256).
///
/// The sandbox never reports a secret it minted or received; statistics and the request log name
/// credentials by this fingerprint instead. Tests compute the fingerprint of a token they hold with
/// this function to find it in [`Stats`](crate::Stats) or the [request log](crate::ApiRequestRecord).
pub fn token_fingerprint(secret: &str) -> String {
    hex::encode(&digest(secret)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_short_and_stable() {
        assert_eq!(token_fingerprint("abc"), "ba7816bf8f01cfea");
    }
}
