//! OAuth scopes and sets of them.
//!
//! Pleo's scopes have the form `resource:permission` (`export-jobs:read`), but an authorization
//! server may grant other names too (`openid`, `offline_access`, names of a future Pleo API).
//! RFC 6749 §3.3 allows any scope-token, so a [`Scope`] is any scope-token; names outside
//! Pleo's form are kept verbatim and can be listed with [`ScopeSet::unmodeled`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest scope name accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 256;

/// How many scope names a server's answer may carry before the rest are dropped (and reported).
pub const MAX_SCOPES: usize = 512;

/// One scope, such as `export-jobs:read` or `openid`.
///
/// Any RFC 6749 scope-token (§3.3: printable ASCII except space, `"` and `\`) of 1 to
/// [`MAX_SCOPE_LEN`] bytes. [`Scope::is_resource_permission`] tells whether it has Pleo's form.
///
/// ```
/// use pleo_auth_core::Scope;
///
/// let read: Scope = "export-jobs:read".parse()?;
/// assert_eq!(read.resource(), Some("export-jobs"));
/// let openid: Scope = "openid".parse()?;
/// assert!(!openid.is_resource_permission());
/// assert!("two words".parse::<Scope>().is_err());
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    /// Validates a scope-token.
    pub fn new(raw: impl Into<String>) -> Result<Self> {
        let raw = raw.into();
        let valid = !raw.is_empty()
            && raw.len() <= MAX_SCOPE_LEN
            && raw
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if valid {
            Ok(Self(raw))
        } else {
            Err(Error::invalid_input(format!(
                "scope {:?} is not an OAuth scope-token (1 to {MAX_SCOPE_LEN} printable ASCII characters without space, quote or backslash)",
                truncate(&raw)
            )))
        }
    }

    /// Whether the scope has Pleo's form `resource:permission`, each side 1 to 64 characters
    /// of `a-z`, `0-9`, `-`, `_` and `.`.
    pub fn is_resource_permission(&self) -> bool {
        self.split().is_some()
    }

    /// The resource of a `resource:permission` scope.
    pub fn resource(&self) -> Option<&str> {
        self.split().map(|(resource, _)| resource)
    }

    /// The permission of a `resource:permission` scope.
    pub fn permission(&self) -> Option<&str> {
        self.split().map(|(_, permission)| permission)
    }

    fn split(&self) -> Option<(&str, &str)> {
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                })
        };
        self.0
            .split_once(':')
            .filter(|(resource, permission)| valid_part(resource) && valid_part(permission))
    }

    /// The scope as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for Scope {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl From<Scope> for String {
    fn from(value: Scope) -> Self {
        value.0
    }
}

/// A set of scopes, displayed and parsed as a space-separated list (the OAuth `scope` format).
///
/// [`FromStr`] is strict (one space between names, every name valid), for settings you write;
/// [`ScopeSet::from_server`] reads what a server sent as liberally as RFC 6749 allows.
///
/// ```
/// use pleo_auth_core::ScopeSet;
///
/// let granted: ScopeSet = "users:read export-jobs:read".parse()?;
/// let needed: ScopeSet = "export-jobs:read export-jobs:write".parse()?;
/// assert!(!granted.contains_all(&needed));
/// assert_eq!(granted.missing(&needed).to_string(), "export-jobs:write");
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
///
/// The scopes are kept sorted in one shared allocation: cloning a set (into every credential
/// built from a grant) copies a pointer, and a set of a few scopes takes a few dozen bytes
/// instead of a tree node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScopeSet(Arc<[Scope]>);

impl ScopeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn from_sorted(scopes: BTreeSet<Scope>) -> Self {
        Self(scopes.into_iter().collect())
    }

    /// Whether every scope of `other` is in this set.
    pub fn contains_all(&self, other: &ScopeSet) -> bool {
        other.iter().all(|scope| self.contains(scope))
    }

    /// Whether the set holds `scope`.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.binary_search(scope).is_ok()
    }

    /// The scopes of `needed` that this set lacks.
    pub fn missing(&self, needed: &ScopeSet) -> ScopeSet {
        needed
            .iter()
            .filter(|scope| !self.contains(scope))
            .cloned()
            .collect()
    }

    /// Adds a scope.
    pub fn insert(&mut self, scope: Scope) {
        if let Err(at) = self.0.binary_search(&scope) {
            let mut scopes = self.0.to_vec();
            scopes.insert(at, scope);
            self.0 = scopes.into();
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Reads a scope list a server sent (a token response, an introspection answer): names
    /// separated by any ASCII whitespace, duplicates folded. Never fails: a name that is not a
    /// scope-token, and names beyond [`MAX_SCOPES`], are dropped, and their number is returned
    /// beside the set so the caller can report them.
    ///
    /// ```
    /// use pleo_auth_core::ScopeSet;
    ///
    /// let (set, dropped) = ScopeSet::from_server("openid  users:read\tprofile \"bad\"");
    /// assert_eq!(set.to_string(), "openid profile users:read");
    /// assert_eq!(set.unmodeled().count(), 2);
    /// assert_eq!(dropped, 1);
    /// ```
    pub fn from_server(list: &str) -> (Self, usize) {
        let mut set = BTreeSet::new();
        let mut dropped = 0;
        for name in list.split_ascii_whitespace() {
            match Scope::new(name) {
                Ok(scope) if set.len() < MAX_SCOPES || set.contains(&scope) => {
                    set.insert(scope);
                }
                _ => dropped += 1,
            }
        }
        (Self::from_sorted(set), dropped)
    }

    /// The scopes not of Pleo's `resource:permission` form (`openid`, `offline_access`, ...).
    pub fn unmodeled(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter().filter(|s| !s.is_resource_permission())
    }

    /// The scopes in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<T: IntoIterator<Item = Scope>>(iter: T) -> Self {
        Self::from_sorted(iter.into_iter().collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for ScopeSet {
    type Err = Error;

    /// Parses a list separated by single spaces (RFC 6749 §3.3); leading, trailing or doubled
    /// spaces and other whitespace are refused. The empty string is the empty set.
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Ok(Self::new());
        }
        s.split(' ').map(Scope::new).collect()
    }
}

impl TryFrom<String> for ScopeSet {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        value.parse()
    }
}

impl From<ScopeSet> for String {
    fn from(value: ScopeSet) -> Self {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scope_validation() {
        for pleo in [
            "users:read",
            "export-jobs:write",
            "tag_groups:read",
            "a.b:c.d",
            "test:test",
        ] {
            let scope = Scope::new(pleo).unwrap();
            assert!(scope.is_resource_permission(), "{pleo}");
        }
        for other in [
            "openid",
            "offline_access",
            "users",
            ":read",
            "users:",
            "Users:read",
            "users:read:x",
            "https://graph.example/.default",
        ] {
            let scope = Scope::new(other).unwrap();
            assert!(!scope.is_resource_permission(), "{other}");
            assert_eq!(scope.resource(), None);
        }
        for bad in [
            "",
            "users :read",
            "users:read\n",
            "quo\"te",
            "back\\slash",
            "caf\u{e9}",
            &"x".repeat(MAX_SCOPE_LEN + 1),
        ] {
            assert!(Scope::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_lists_are_read_liberally_and_report_what_was_dropped() {
        let (set, dropped) = ScopeSet::from_server("  openid\r\nusers:read users:read\t\"x\" ");
        assert_eq!(set.to_string(), "openid users:read");
        assert_eq!(dropped, 1);
        let many: String = (0..MAX_SCOPES + 10).map(|i| format!("s{i} ")).collect();
        let (set, dropped) = ScopeSet::from_server(&many);
        assert_eq!(set.len(), MAX_SCOPES);
        assert_eq!(dropped, 10);
        let (set, dropped) = ScopeSet::from_server("");
        assert!(set.is_empty());
        assert_eq!(dropped, 0);
    }

    #[test]
    fn set_parsing_and_display_are_canonical() {
        let set: ScopeSet = "vendors:read users:read vendors:read".parse().unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_string(), "users:read vendors:read");
        assert!("".parse::<ScopeSet>().unwrap().is_empty());
        for bad in [
            " users:read",
            "users:read ",
            "users:read  vendors:read",
            "users:read\tvendors:read",
            "users:read \"x\"",
        ] {
            assert!(bad.parse::<ScopeSet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contains_all_and_missing() {
        let granted: ScopeSet = "a:read b:read".parse().unwrap();
        assert!(granted.contains_all(&"a:read".parse().unwrap()));
        assert!(granted.contains_all(&ScopeSet::new()));
        let needed: ScopeSet = "a:read c:write".parse().unwrap();
        assert!(!granted.contains_all(&needed));
        assert_eq!(granted.missing(&needed).to_string(), "c:write");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = s.parse::<ScopeSet>();
            let (set, _) = ScopeSet::from_server(&s);
            let shown = set.to_string();
            prop_assert_eq!(shown.parse::<ScopeSet>().unwrap(), set);
        }
    }
}
