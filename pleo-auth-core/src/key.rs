//! Store keys and the identifiers they are built from.
//!
//! Every key part that comes from outside (client ids, tenant ids, subjects) goes through one
//! injective encoding, so ids containing `/`, `:`, `..`, `%`, NUL, unicode or thousands of
//! characters can neither collide with another id nor escape their prefix.
//! See [`StoreKey`] on letter case.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::environment::EnvironmentName;
use crate::error::{Error, Result};
use crate::subject::Subject;

/// Longest segment of a [`StoreKey`]; file systems allow 255 bytes per name.
pub const MAX_SEGMENT_LEN: usize = 200;
/// Longest [`StoreKey`].
pub const MAX_STORE_KEY_LEN: usize = 16 * 1024;

/// Bytes that stay literal in an encoded part (`a-z 0-9 - _`); everything else, upper-case
/// letters included, is percent-encoded (see [`StoreKey`] on case).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .add(b'A')
    .add(b'B')
    .add(b'C')
    .add(b'D')
    .add(b'E')
    .add(b'F')
    .add(b'G')
    .add(b'H')
    .add(b'I')
    .add(b'J')
    .add(b'K')
    .add(b'L')
    .add(b'M')
    .add(b'N')
    .add(b'O')
    .add(b'P')
    .add(b'Q')
    .add(b'R')
    .add(b'S')
    .add(b'T')
    .add(b'U')
    .add(b'V')
    .add(b'W')
    .add(b'X')
    .add(b'Y')
    .add(b'Z');

/// A validated key in a [`SecretStore`](crate::SecretStore): segments separated by `/`, each
/// 1 to 200 bytes of `A-Z a-z 0-9 _ - % +`.
///
/// **Case.** Ids are case-sensitive: `Acme` and `acme` are two tenants, as they are two
/// strings. Keys built with [`StoreKey::from_parts`] are case-safe: the encoding writes every
/// upper-case letter as a percent escape (`A` is `%41`), so an encoded key holds lower-case
/// letters, digits, `-`, `_`, `+` and escapes with upper-case hex digits only. Two keys that
/// differ only in letter case never both come out of the encoding, and a backend that compares
/// names without case (a file store on macOS, Windows or a FAT volume, a database column with a
/// case-insensitive collation) keeps every id apart. Ids are compared byte for byte; Unicode
/// normalization is not applied.
///
/// Keys never contain `.`, so no segment can be `.` or `..`, and a backend can map segments to
/// file names, Vault paths or Redis keys without escaping. Build keys from raw parts with
/// [`StoreKey::from_parts`] or [`StoreKey::child`]:
///
/// ```
/// use pleo_auth_core::StoreKey;
///
/// let a = StoreKey::from_parts(["tenants", "acme/gmbh"])?;
/// let b = StoreKey::from_parts(["tenants", "acme", "gmbh"])?;
/// assert_ne!(a, b);
/// assert_eq!(a.as_str(), "tenants/acme%2Fgmbh");
/// assert_eq!(a.parts(), vec!["tenants".to_owned(), "acme/gmbh".to_owned()]);
/// // Upper-case letters are escaped, so `Acme` and `acme` stay apart without case.
/// let upper = StoreKey::from_parts(["tenants", "Acme"])?;
/// assert_eq!(upper.as_str(), "tenants/%41cme");
/// assert_ne!(
///     upper.as_str().to_lowercase(),
///     StoreKey::from_parts(["tenants", "acme"])?.as_str().to_lowercase()
/// );
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(String);

impl StoreKey {
    /// Validates an already-encoded key, such as one returned by [`SecretStore::list`].
    ///
    /// [`SecretStore::list`]: crate::SecretStore::list
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.is_empty() || raw.len() > MAX_STORE_KEY_LEN {
            return Err(Error::invalid_input("store key is empty or too long"));
        }
        for segment in raw.split('/') {
            let valid = !segment.is_empty()
                && segment.len() <= MAX_SEGMENT_LEN
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'%' | b'+'));
            if !valid {
                return Err(Error::invalid_input(
                    "store key segments must be 1-200 bytes of A-Z a-z 0-9 _ - % +",
                ));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// Encodes raw parts into a key; each part must be non-empty.
    pub fn from_parts<I, S>(parts: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut key = String::new();
        for part in parts {
            if !key.is_empty() {
                key.push('/');
            }
            encode_part(part.as_ref(), &mut key)?;
        }
        if key.is_empty() {
            return Err(Error::invalid_input("store key needs at least one part"));
        }
        if key.len() > MAX_STORE_KEY_LEN {
            return Err(Error::invalid_input("store key is too long"));
        }
        Ok(Self(key))
    }

    /// This key with one more raw part appended.
    pub fn child(&self, part: &str) -> Result<Self> {
        let mut key = self.0.clone();
        key.push('/');
        encode_part(part, &mut key)?;
        if key.len() > MAX_STORE_KEY_LEN {
            return Err(Error::invalid_input("store key is too long"));
        }
        Ok(Self(key))
    }

    /// The encoded key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The encoded segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether `prefix` is this key or a whole-segment prefix of it.
    pub fn starts_with(&self, prefix: &StoreKey) -> bool {
        match self.0.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// Decodes the raw parts the key was built from.
    pub fn parts(&self) -> Vec<String> {
        let mut parts = Vec::new();
        let mut current = String::new();
        for segment in self.segments() {
            if let Some(chunk) = segment.strip_suffix('+') {
                current.push_str(chunk);
                continue;
            }
            current.push_str(segment);
            let decoded = percent_encoding::percent_decode_str(&current).decode_utf8_lossy();
            parts.push(decoded.into_owned());
            current.clear();
        }
        parts
    }
}

/// Percent-encodes one part and splits it into segments of at most [`MAX_SEGMENT_LEN`] bytes;
/// every segment but the last of a part ends with `+`, which encoding never produces.
fn encode_part(part: &str, out: &mut String) -> Result<()> {
    if part.is_empty() {
        return Err(Error::invalid_input("store key parts must not be empty"));
    }
    let encoded: String = utf8_percent_encode(part, ENCODE).collect();
    let chunk_len = MAX_SEGMENT_LEN - 1;
    let mut rest = encoded.as_str();
    while rest.len() > MAX_SEGMENT_LEN {
        let (head, tail) = rest.split_at(chunk_len);
        out.push_str(head);
        out.push_str("+/");
        rest = tail;
    }
    out.push_str(rest);
    Ok(())
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StoreKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates an id: 1 to 1024 bytes, no control characters.
            pub fn new(id: impl Into<String>) -> Result<Self> {
                let id = id.into();
                if id.is_empty() || id.len() > 1024 || id.chars().any(char::is_control) {
                    return Err(Error::invalid_input(concat!(
                        $what,
                        " must be 1-1024 bytes without control characters"
                    )));
                }
                Ok(Self(id))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

text_id!(
    /// The OAuth client id issued by Pleo, or the integration's own id for API keys.
    ClientId,
    "client id"
);
text_id!(
    /// The integrator's own id for a customer: an ERP company, an account number, a tenant.
    /// Case-sensitive (`Acme` and `acme` are two tenants), with case-safe store keys (see
    /// [`StoreKey`]).
    ///
    /// Each tenant is linked one-to-one with a Pleo subject per environment (see
    /// [`TenantLinks`](crate::TenantLinks)).
    TenantId,
    "tenant id"
);

/// The key of everything stored about one credential: environment, client, subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CredentialKey {
    /// Where the credential is valid.
    pub environment: EnvironmentName,
    /// The OAuth client id or the integration id.
    pub client: ClientId,
    /// The company or organisation the credential acts for.
    pub subject: Subject,
}

impl CredentialKey {
    /// A key from its three parts.
    pub fn new(environment: EnvironmentName, client: ClientId, subject: Subject) -> Self {
        Self {
            environment,
            client,
            subject,
        }
    }
}

/// The layout of pleo-auth's records in a store. All keys start with `pleo-auth/v1/`.
pub mod layout {
    use super::*;

    const ROOT: [&str; 2] = ["pleo-auth", "v1"];

    fn key(parts: &[&str]) -> StoreKey {
        StoreKey::from_parts(ROOT.iter().chain(parts)).expect("validated ids make valid keys")
    }

    /// Where the OAuth grant of `key` is stored.
    pub fn oauth_grant(key: &CredentialKey) -> StoreKey {
        key_for("oauth", key)
    }

    /// The prefix of every OAuth grant of one client in one environment.
    pub fn oauth_grants(environment: &EnvironmentName, client: &ClientId) -> StoreKey {
        key(&["oauth", environment.as_str(), client.as_str()])
    }

    /// Where the API key credential of `key` is stored.
    pub fn api_key(key: &CredentialKey) -> StoreKey {
        key_for("apikey", key)
    }

    /// The prefix of every API key of one integration in one environment.
    pub fn api_keys(environment: &EnvironmentName, integration: &ClientId) -> StoreKey {
        key(&["apikey", environment.as_str(), integration.as_str()])
    }

    /// Where a pending authorization is stored, by a digest of its `state` (never the state).
    pub fn pending_authorization(
        environment: &EnvironmentName,
        client: &ClientId,
        state_digest: &str,
    ) -> StoreKey {
        key(&[
            "pending",
            environment.as_str(),
            client.as_str(),
            state_digest,
        ])
    }

    /// Whether `key` is where a pending authorization is stored: a short-lived, single-use
    /// record that a backend may delete at once rather than keep recoverable.
    pub fn is_pending_authorization(stored: &StoreKey) -> bool {
        let root = key(&["pending"]);
        stored.starts_with(&root) && *stored != root
    }

    /// The prefix of every pending authorization of one client in one environment.
    pub fn pending_authorizations(environment: &EnvironmentName, client: &ClientId) -> StoreKey {
        key(&["pending", environment.as_str(), client.as_str()])
    }

    /// Where a dangling grant is stored, by an id derived from its tokens (never a token).
    pub fn dangling_grant(environment: &EnvironmentName, client: &ClientId, id: &str) -> StoreKey {
        key(&["dangling", environment.as_str(), client.as_str(), id])
    }

    /// The prefix of every dangling grant of one client in one environment.
    pub fn dangling_grants(environment: &EnvironmentName, client: &ClientId) -> StoreKey {
        key(&["dangling", environment.as_str(), client.as_str()])
    }

    /// Where the link of a tenant to its Pleo subject is stored.
    pub fn tenant_link(environment: &EnvironmentName, tenant: &TenantId) -> StoreKey {
        key(&["tenant", environment.as_str(), tenant.as_str()])
    }

    /// The prefix of every tenant link in one environment.
    pub fn tenant_links(environment: &EnvironmentName) -> StoreKey {
        key(&["tenant", environment.as_str()])
    }

    /// Where the reverse link of a Pleo subject to its tenant is stored.
    pub fn subject_link(environment: &EnvironmentName, subject: &Subject) -> StoreKey {
        key(&["subject", environment.as_str(), &subject.to_string()])
    }

    /// The lease that guards refreshes of the record at `record`.
    pub fn lease(record: &StoreKey) -> StoreKey {
        let mut parts: Vec<String> = ROOT.iter().map(|s| (*s).to_owned()).collect();
        parts.push("lease".to_owned());
        parts.extend(record.parts());
        StoreKey::from_parts(parts).expect("a valid key makes a valid lease key")
    }

    fn key_for(kind: &str, k: &CredentialKey) -> StoreKey {
        key(&[
            kind,
            k.environment.as_str(),
            k.client.as_str(),
            &k.subject.to_string(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pending_authorization_keys_are_recognised() {
        let env = EnvironmentName::new("staging").unwrap();
        let client = ClientId::new("client").unwrap();
        assert!(layout::is_pending_authorization(
            &layout::pending_authorization(&env, &client, "abc")
        ));
        let subject: Subject = "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10"
            .parse()
            .unwrap();
        let grant = layout::oauth_grant(&CredentialKey::new(env, client, subject));
        assert!(!layout::is_pending_authorization(&grant));
        assert!(!layout::is_pending_authorization(
            &StoreKey::parse("pending/x").unwrap()
        ));
    }

    #[test]
    fn parse_accepts_only_safe_segments() {
        assert!(StoreKey::parse("a/b-c/D_9/%2F/x+").is_ok());
        for bad in [
            "", "/a", "a/", "a//b", "a/./b", "a/../b", "a b", "a\0b", "ä",
        ] {
            assert!(StoreKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(StoreKey::parse(&"a".repeat(201)).is_err());
    }

    #[test]
    fn hostile_parts_stay_inside_their_segment() {
        for hostile in ["..", ".", "a/b", "%2F", "a:b", "\0", "ünï", "a+", "+", "%"] {
            let key = StoreKey::from_parts(["p", hostile]).unwrap();
            assert_eq!(key.segments().count(), 2, "{hostile:?} -> {key}");
            assert!(!key.as_str().contains('.'));
            assert_eq!(key.parts(), vec!["p".to_owned(), hostile.to_owned()]);
        }
        assert!(StoreKey::from_parts(["p", ""]).is_err());
    }

    #[test]
    fn long_parts_are_chunked_and_round_trip() {
        let long = "x".repeat(1000);
        let key = StoreKey::from_parts(["p", &long]).unwrap();
        assert!(key.segments().all(|s| s.len() <= MAX_SEGMENT_LEN));
        assert_eq!(key.parts(), vec!["p".to_owned(), long]);
        assert!(StoreKey::parse(key.as_str()).is_ok());
    }

    #[test]
    fn starts_with_is_segment_wise() {
        let prefix = StoreKey::from_parts(["a", "b"]).unwrap();
        assert!(StoreKey::parse("a/b/c").unwrap().starts_with(&prefix));
        assert!(StoreKey::parse("a/b").unwrap().starts_with(&prefix));
        assert!(!StoreKey::parse("a/bc").unwrap().starts_with(&prefix));
    }

    #[test]
    fn ids_reject_control_characters() {
        assert!(TenantId::new("acme-gmbh").is_ok());
        assert!(TenantId::new("acme/gmbh ü").is_ok());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("a\nb").is_err());
        assert!(ClientId::new("x".repeat(1025)).is_err());
    }

    fn part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,3}",
            "[/:.%+]{1,4}",
            "\\PC{1,8}",
            Just("..".to_owned()),
            (1usize..700).prop_map(|n| "y".repeat(n)),
        ]
    }

    #[test]
    fn ids_differing_only_in_case_get_keys_differing_beyond_case() {
        let upper = StoreKey::from_parts(["t", "Acme"]).unwrap();
        let lower = StoreKey::from_parts(["t", "acme"]).unwrap();
        assert_eq!(upper.as_str(), "t/%41cme");
        assert_ne!(
            upper.as_str().to_ascii_lowercase(),
            lower.as_str().to_ascii_lowercase()
        );
        assert_eq!(upper.parts(), vec!["t".to_owned(), "Acme".to_owned()]);
    }

    proptest! {
        /// Two different parts never give keys that a case-insensitive backend would take for
        /// one name.
        #[test]
        fn encoding_is_injective_without_case(a in "[a-zA-Z%+/]{1,6}", b in "[a-zA-Z%+/]{1,6}") {
            let ka = StoreKey::from_parts([&a]).unwrap();
            let kb = StoreKey::from_parts([&b]).unwrap();
            prop_assert_eq!(
                ka.as_str().eq_ignore_ascii_case(kb.as_str()),
                a == b
            );
        }

        #[test]
        fn encoding_is_injective(a in prop::collection::vec(part(), 1..4), b in prop::collection::vec(part(), 1..4)) {
            let ka = StoreKey::from_parts(&a).unwrap();
            let kb = StoreKey::from_parts(&b).unwrap();
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.parts(), a);
            prop_assert!(StoreKey::parse(ka.as_str()).is_ok());
        }

        #[test]
        fn a_child_never_escapes_its_parent(parent in prop::collection::vec(part(), 1..3), child in part()) {
            let p = StoreKey::from_parts(&parent).unwrap();
            let c = p.child(&child).unwrap();
            prop_assert!(c.starts_with(&p));
            prop_assert_ne!(c, p);
        }
    }
}
